//! Shared objects' lifetime: an object stays alive while a handle to it is
//! in flight (in a ring, a queue slot, a pipe) or held, and is freed once no
//! process holds it; a receiver can open what it was sent even if the sender
//! dropped its copy first; nothing grows per call on any path (queue, pipe,
//! task argument, task result, process argument and result).

mod common;

use corepool::{Error, Pipe, PipeEnd, Pool, Process, Queue, SharedArray};

fn sum(a: SharedArray<u64>) -> u64 {
    a.to_vec().iter().sum()
}

fn fresh(n: u64) -> SharedArray<u64> {
    let v: Vec<u64> = (0..n).collect();
    SharedArray::from_slice(&v).unwrap()
}

/// The child creates an array, puts it, drops its own copy and returns.
fn put_fresh_and_return((q, n): (Queue<SharedArray<u64>>, u64)) -> u64 {
    q.put(&fresh(n)).unwrap();
    n
}

/// Gets an array a parent put and dropped, and sums it.
fn get_and_sum(q: Queue<SharedArray<u64>>) -> u64 {
    sum(q.get().unwrap())
}

fn send_fresh_and_return(end: PipeEnd<SharedArray<u64>>) -> u64 {
    end.send(&fresh(10)).unwrap();
    10
}

fn a_receiver_opens_what_its_sender_dropped_first() {
    // Child to parent, through a queue; the child has exited by the time
    // the parent reads the array.
    let q = Queue::<SharedArray<u64>>::new(2).unwrap();
    let p = Process::start(put_fresh_and_return, (q.clone(), 100)).unwrap();
    let a = q.get().unwrap();
    assert_eq!(p.join().unwrap(), 100);
    assert_eq!(sum(a), 4950);
    // Parent to child: the parent drops its copy before the child starts.
    q.put(&fresh(10)).unwrap();
    assert_eq!(
        Process::start(get_and_sum, q.clone())
            .unwrap()
            .join()
            .unwrap(),
        45
    );
    // Through a pipe.
    let (rx, tx) = Pipe::one_way::<SharedArray<u64>>().unwrap();
    let p = Process::start(send_fresh_and_return, tx).unwrap();
    assert_eq!(sum(rx.recv().unwrap()), 45);
    p.join().unwrap();
    // A Process's result: the array it created outlives it.
    let a = Process::start(fresh, 20).unwrap().join().unwrap();
    assert_eq!(sum(a), 190);
    // A pool task's result.
    let pool = Pool::new(1).unwrap();
    assert_eq!(sum(pool.apply(fresh, 30).unwrap()), 435);
}

fn nothing_grows_per_call_on_any_path() {
    let pool = Pool::new(1).unwrap();
    let q = Queue::<SharedArray<u64>>::new(4).unwrap();
    let (a, b) = Pipe::duplex::<SharedArray<u64>>().unwrap();
    let round = |n: usize| {
        for i in 0..n as u64 {
            // Queue and pipe: a new array each time, dropped by its sender
            // before its receiver opens it.
            q.put(&fresh(4)).unwrap();
            assert_eq!(sum(q.get().unwrap()), 6);
            a.send(&fresh(4)).unwrap();
            assert_eq!(sum(b.recv().unwrap()), 6);
            // Task argument and task result.
            assert_eq!(pool.apply(sum, fresh(4)).unwrap(), 6);
            assert_eq!(
                sum(pool.apply(fresh, i % 5 + 1).unwrap()),
                (i % 5 + 1) * (i % 5) / 2
            );
        }
    };
    round(50);
    let parent = common::holdings(0);
    let worker = pool.apply(common::holdings, 0).unwrap();
    round(2000);
    common::assert_no_growth("parent", parent, common::holdings(0));
    common::assert_no_growth("worker", worker, pool.apply(common::holdings, 0).unwrap());
    // Process argument and result: fewer rounds (a process each).
    let processes = |n: usize| {
        for _ in 0..n {
            let p = Process::start(sum, fresh(4)).unwrap();
            assert_eq!(p.join().unwrap(), 6);
            assert_eq!(sum(Process::start(fresh, 4).unwrap().join().unwrap()), 6);
        }
    };
    processes(5);
    let parent = common::holdings(0);
    processes(150);
    // A reaper thread may still be closing the last child's pidfd just
    // after `join` returned: wait for that one to go (a leak per process
    // would never settle: 150 of them).
    common::eventually("the last process's descriptors close", || {
        common::holdings(0).0 <= parent.0
    });
    common::assert_no_growth("parent, processes", parent, common::holdings(0));
    assert_eq!(corepool::testing::lingering_objects(), 0);
}

fn hold_queue(q: Queue<SharedArray<u64>>) -> u64 {
    q.len() as u64
}

fn objects_in_tasks_that_never_run_are_let_go() {
    // Arguments of tasks no worker took (cancelled by `terminate`) never
    // get decoded: their objects are let go with the tasks.
    let pool = Pool::new(1).unwrap();
    let blocker = pool.apply_async(
        |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms)),
        60_000,
    );
    let queued: Vec<_> = (0..5)
        .map(|i| pool.apply_async(sum, fresh(i)).unwrap())
        .collect();
    pool.terminate();
    drop(blocker);
    for h in queued {
        assert!(matches!(h.get(), Err(Error::Cancelled)));
    }
    drop(pool);
    assert_eq!(corepool::testing::lingering_objects(), 0);
    // A process that dies before decoding its argument.
    let q = Queue::<SharedArray<u64>>::new(1).unwrap();
    let p = Process::start(hold_queue, q.clone()).unwrap();
    p.kill().unwrap();
    let _ = p.join();
    drop(q);
    assert_eq!(corepool::testing::lingering_objects(), 0);
}

fn a_forged_count_gives_a_typed_error_never_worse() {
    // A hostile process zeroes the count while a handle is in flight: the
    // sender lets the array go, and its receiver gets a decode error.
    let q = Queue::<SharedArray<u64>>::new(2).unwrap();
    let a = fresh(3);
    q.put(&a).unwrap();
    corepool::testing::forge_in_flight(&a, 0);
    drop(a);
    let got = Process::start(|q: Queue<SharedArray<u64>>| q.get().is_err(), q.clone());
    assert!(
        got.unwrap().join().unwrap(),
        "a typed error in the receiver"
    );
    // A forged huge count: the sender keeps it (bounded), nothing breaks.
    let a = fresh(3);
    q.put(&a).unwrap();
    corepool::testing::forge_in_flight(&a, u32::MAX);
    drop(a);
    let got = q.get().unwrap();
    assert_eq!(sum(got.clone()), 3);
    assert!(
        corepool::testing::lingering_objects() >= 1,
        "kept for receivers"
    );
    // Set back (the received copy shares the count): it goes.
    corepool::testing::forge_in_flight(&got, 0);
    drop(got);
    assert_eq!(corepool::testing::lingering_objects(), 0);
}

fn a_pipe_end_whose_put_failed_is_still_its_senders() {
    // A put that stores nothing (full, closed) hands nothing over: the end
    // is still ours, so dropping it closes it and its peer sees the end of
    // the stream instead of waiting for ever on an end in transit.
    let q = Queue::<PipeEnd<u64>>::new(1).unwrap();
    let (other, filler) = Pipe::duplex::<u64>().unwrap();
    q.put(&filler).unwrap();
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    assert!(!q.try_put(&theirs).unwrap(), "full");
    q.close();
    assert!(matches!(q.put(&theirs), Err(Error::QueueClosed)));
    theirs.send(&1).unwrap();
    drop(theirs);
    assert_eq!(mine.recv().unwrap(), 1);
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
    // The one that went in is received, and is its receiver's.
    drop(q.get().unwrap());
    assert!(matches!(other.recv(), Err(Error::EndOfStream)));
}

fn hand_back(end: PipeEnd<u64>) -> PipeEnd<u64> {
    end
}

fn a_pipe_end_in_a_result_nobody_joins_is_closed() {
    // The child returns the end it was given; nobody joins it. Dropping the
    // handle while the child waits for its result to be read receives the
    // result and drops it, so the end closes and its peer sees the end of
    // the stream instead of waiting for ever on an end left in transit.
    // (Dropped after the child is gone, the result cannot be opened any
    // more and the end stays in transit: docs/protocol.md, "Transits".)
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let p = Process::start(hand_back, theirs).unwrap();
    // Done: it waits at its exit (at most 5 s) for its result to be read.
    corepool::testing::wait_for_outcome(&p);
    drop(p);
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
}

fn hand_back_with_bulk(end: PipeEnd<u64>) -> (PipeEnd<u64>, Vec<u8>) {
    (end, vec![7; 64 << 10])
}

fn a_pipe_end_in_a_spilled_result_nobody_joins_is_closed() {
    // As above, with a result larger than the process's result room: it
    // spills, and the spill is received and dropped the same way, so the
    // end in it closes too instead of staying in transit for ever.
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let p = Process::builder()
        .max_result_bytes(4096)
        .start(hand_back_with_bulk, theirs)
        .unwrap();
    corepool::testing::wait_for_outcome(&p);
    drop(p);
    // Bounded so that a regression fails instead of hanging; no duration is
    // asserted.
    let got = mine.recv_timeout(std::time::Duration::from_secs(60));
    assert!(matches!(got, Err(Error::EndOfStream)), "{got:?}");
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        a_receiver_opens_what_its_sender_dropped_first,
        nothing_grows_per_call_on_any_path,
        objects_in_tasks_that_never_run_are_let_go,
        a_forged_count_gives_a_typed_error_never_worse,
        a_pipe_end_whose_put_failed_is_still_its_senders,
        a_pipe_end_in_a_result_nobody_joins_is_closed,
        a_pipe_end_in_a_spilled_result_nobody_joins_is_closed,
    ]);
}
