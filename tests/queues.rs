//! Unbounded `Queue`s and `JoinableQueue`s across processes: producers that
//! grow the queue and then exit or are killed, consumers that die in the
//! middle of a get, and `join` across processes. Runs with its own `main`.

mod common;

use corepool::{Error, JoinableQueue, Pool, Process, Queue};
use std::time::Duration;

/// More values than the first few rings of an unbounded queue of `u64`s
/// hold (the first holds 256): the queue grows several times.
const MANY: u64 = 20_000;

fn produce(arg: (Queue<u64>, u64, u64)) -> u64 {
    let (q, from, n) = arg;
    for i in from..from + n {
        q.put(&i).unwrap();
    }
    n
}

fn an_unbounded_queue_filled_by_an_exited_child_keeps_every_value() {
    let q = Queue::<u64>::unbounded().unwrap();
    // The child grows the queue many times over, then exits: the memory it
    // added stays, and every value comes out in order.
    let child = Process::start(produce, (q.clone(), 0, MANY)).unwrap();
    assert_eq!(child.join().unwrap(), MANY);
    assert_eq!(q.len(), MANY as usize);
    assert!(!q.is_full());
    for i in 0..MANY {
        assert_eq!(q.get().unwrap(), i);
    }
    assert!(q.is_empty());
    assert!(matches!(q.try_get(), Ok(None)));
}

/// Bytes of memory the unbounded queue data files this process holds use.
fn ring_memory_in_use() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().contains("corepool-queue-rings"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|md| md.blocks() * 512)
        .sum()
}

fn drained_rings_give_their_memory_back() {
    let q = Queue::<u64>::unbounded().unwrap();
    let before = ring_memory_in_use();
    let child = Process::start(produce, (q.clone(), 0, MANY)).unwrap();
    assert_eq!(child.join().unwrap(), MANY);
    let full = ring_memory_in_use().saturating_sub(before);
    // 20 000 values fill rings of 256, 512, ... 16 384 slots of 64 bytes:
    // about 8 MiB, half of it in the last ring.
    assert!(full >= 4 << 20, "{full} bytes for {MANY} values");
    assert!((0..MANY).all(|i| q.get().unwrap() == i));
    let drained = ring_memory_in_use().saturating_sub(before);
    assert!(
        drained < full * 3 / 4,
        "{drained} of {full} bytes still in use: the drained rings were not given back"
    );
}

fn consumers_keep_up_with_a_growing_queue_across_processes() {
    let q = Queue::<u64>::unbounded().unwrap();
    let producers: Vec<_> = (0..2)
        .map(|p| Process::start(produce, (q.clone(), p * MANY, MANY)).unwrap())
        .collect();
    // The parent reads while the children put: each producer's values come
    // out in its order, and all of them exactly once.
    let mut last = [None::<u64>; 2];
    let mut all = Vec::with_capacity(2 * MANY as usize);
    for _ in 0..2 * MANY {
        let v = q.get_timeout(Duration::from_secs(60)).unwrap();
        let p = (v / MANY) as usize;
        assert!(last[p].is_none_or(|l| l < v), "producer {p} out of order");
        last[p] = Some(v);
        all.push(v);
    }
    for p in producers {
        assert_eq!(p.join().unwrap(), MANY);
    }
    all.sort_unstable();
    assert_eq!(all, (0..2 * MANY).collect::<Vec<_>>());
}

fn put_then_wait(arg: (Queue<u64>, u64, Queue<u64>)) -> u64 {
    let (q, n, ready) = arg;
    for i in 0..n {
        q.put(&i).unwrap();
    }
    ready.put(&n).unwrap();
    // Wait to be killed: the parent SIGKILLs us now.
    let never = Queue::<u64>::new(1).unwrap();
    never.get().unwrap_or(0)
}

fn a_producer_killed_right_after_growing_loses_nothing() {
    let q = Queue::<u64>::unbounded().unwrap();
    let ready = Queue::<u64>::new(1).unwrap();
    // 256 values fill the first ring, 512 the second: the 769th put grew
    // the queue a second time, just before the producer is killed.
    let n = 256 + 512 + 1;
    let child = Process::start(put_then_wait, (q.clone(), n, ready.clone())).unwrap();
    assert_eq!(ready.get_timeout(Duration::from_secs(60)).unwrap(), n);
    child.kill().unwrap();
    assert!(child.join().is_err(), "killed");
    for i in 0..n {
        assert_eq!(q.get().unwrap(), i);
    }
    // And it goes on growing without its grower.
    for i in 0..2000 {
        q.put(&i).unwrap();
    }
    assert!((0..2000).all(|i| q.get().unwrap() == i));
}

fn a_consumer_dying_mid_get_wedges_nothing() {
    let q = Queue::<u64>::unbounded().unwrap();
    for i in 0..300 {
        q.put(&i).unwrap();
    }
    let dead = Process::start(
        |q: Queue<u64>| -> u64 { corepool::testing::abort_while_getting(&q) },
        q.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    // Value 0 died with its reader; the rest come out across the ring
    // boundary, and later puts and gets go on.
    assert!((1..300).all(|i| q.get().unwrap() == i));
    for i in 0..1000 {
        q.put(&i).unwrap();
    }
    assert!((0..1000).all(|i| q.get().unwrap() == i));
    assert!(q.is_empty());
}

fn a_producer_dying_mid_put_wedges_nothing() {
    let q = Queue::<u64>::unbounded().unwrap();
    let dead = Process::start(
        |q: Queue<u64>| -> u64 { corepool::testing::abort_while_putting(&q) },
        q.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    let alive = Process::start(produce, (q.clone(), 100, 600)).unwrap();
    let got: Vec<u64> = (0..600)
        .map(|_| q.get_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    assert_eq!(got, (100..700).collect::<Vec<_>>());
    alive.join().unwrap();
}

fn an_unbounded_queue_travels_to_pool_tasks_and_through_queues() {
    let q = Queue::<u64>::unbounded().unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let results: Vec<_> = (0..4u64)
        .map(|p| {
            pool.apply_async(produce, (q.clone(), p * 1000, 1000))
                .unwrap()
        })
        .collect();
    for r in results {
        assert_eq!(r.get().unwrap(), 1000);
    }
    let mut got: Vec<u64> = (0..4000).map(|_| q.get().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..4000).collect::<Vec<_>>());
    // Through a bounded queue of queues to a child, which fills it.
    let carrier = Queue::<Queue<u64>>::new(1).unwrap();
    carrier.put(&q).unwrap();
    let child = Process::start(
        |carrier: Queue<Queue<u64>>| produce((carrier.get().unwrap(), 0, MANY)),
        carrier,
    )
    .unwrap();
    assert_eq!(child.join().unwrap(), MANY);
    assert!((0..MANY).all(|i| q.get().unwrap() == i));
}

fn work(q: JoinableQueue<u64>) -> u64 {
    let mut done = 0;
    while let Ok(_value) = q.get() {
        q.task_done().unwrap();
        done += 1;
    }
    done
}

fn join_returns_once_every_value_is_done_across_processes() {
    for q in [
        JoinableQueue::<u64>::unbounded().unwrap(),
        JoinableQueue::<u64>::new(16).unwrap(),
    ] {
        let workers: Vec<_> = (0..2)
            .map(|_| Process::start(work, q.clone()).unwrap())
            .collect();
        for i in 0..MANY {
            q.put(&i).unwrap();
        }
        q.join().unwrap();
        assert_eq!(q.unfinished(), 0);
        assert!(q.is_empty());
        q.close();
        let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(done, MANY);
    }
}

fn task_done_too_often_is_an_error_in_any_process() {
    let q = JoinableQueue::<u64>::unbounded().unwrap();
    q.put(&1).unwrap();
    let child = Process::start(
        |q: JoinableQueue<u64>| -> (bool, bool) {
            q.get().unwrap();
            let first = q.task_done().is_ok();
            let second = matches!(q.task_done(), Err(Error::InvalidConfig { .. }));
            (first, second)
        },
        q.clone(),
    )
    .unwrap();
    assert_eq!(child.join().unwrap(), (true, true));
    assert!(matches!(q.task_done(), Err(Error::InvalidConfig { .. })));
    q.join().unwrap();
}

fn join_timeout_ends_when_a_consumer_died_holding_a_value() {
    let q = JoinableQueue::<u64>::new(4).unwrap();
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    // The consumer takes a value and dies before marking it done: nobody
    // can tell that from a slow consumer, so join waits to its deadline.
    let dead = Process::start(
        |q: JoinableQueue<u64>| -> u64 {
            q.get().unwrap();
            std::process::abort()
        },
        q.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    assert_eq!(q.get().unwrap(), 2);
    q.task_done().unwrap();
    assert!(matches!(
        q.join_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    assert_eq!(q.unfinished(), 1, "the dead consumer's value");
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        an_unbounded_queue_filled_by_an_exited_child_keeps_every_value,
        drained_rings_give_their_memory_back,
        consumers_keep_up_with_a_growing_queue_across_processes,
        a_producer_killed_right_after_growing_loses_nothing,
        a_consumer_dying_mid_get_wedges_nothing,
        a_producer_dying_mid_put_wedges_nothing,
        an_unbounded_queue_travels_to_pool_tasks_and_through_queues,
        join_returns_once_every_value_is_done_across_processes,
        task_done_too_often_is_an_error_in_any_process,
        join_timeout_ends_when_a_consumer_died_holding_a_value,
    ]);
}
