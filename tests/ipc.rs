//! `Queue` and `Pipe` across processes: Processes, pool workers and the
//! parent, and peers that die in the middle of a call. Runs with its own
//! `main`.

mod common;

use corepool::{AtomicValue, Error, Pipe, PipeEnd, Pool, Process, Queue, Value};
use std::time::Duration;

fn produce(arg: (Queue<u64>, u64, u64)) -> u64 {
    let (q, from, n) = arg;
    for i in from..from + n {
        q.put(&i).unwrap();
    }
    n
}

fn consume(arg: (Queue<u64>, u64)) -> u64 {
    let (q, n) = arg;
    (0..n).map(|_| q.get().unwrap()).sum()
}

fn many_producers_and_consumers_across_processes() {
    let q = Queue::<u64>::new(64).unwrap();
    let n = 20_000u64;
    let producers: Vec<_> = (0..2)
        .map(|p| Process::start(produce, (q.clone(), p * n, n)).unwrap())
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::start(consume, (q.clone(), n)).unwrap())
        .collect();
    for p in producers {
        assert_eq!(p.join().unwrap(), n);
    }
    let total: u64 = consumers.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(total, (0..2 * n).sum::<u64>(), "every value exactly once");
    assert!(q.is_empty());
}

fn pool_workers_put_and_the_parent_gets() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let q = Queue::<u64>::new(1024).unwrap();
    let items: Vec<(Queue<u64>, u64)> = (0..500u64).map(|i| (q.clone(), i)).collect();
    pool.map(|(q, i): (Queue<u64>, u64)| q.put(&(i * 3)).unwrap(), items)
        .unwrap();
    let mut got: Vec<u64> = (0..500)
        .map(|_| q.get_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..500u64).map(|i| i * 3).collect::<Vec<_>>());
}

fn a_producer_dying_mid_put_blocks_nobody() {
    let q = Queue::<u64>::new(8).unwrap();
    let dead = Process::start(
        |q: Queue<u64>| -> u64 { corepool::testing::abort_while_putting(&q) },
        q.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    // The dead producer's slot is skipped; later values arrive.
    let alive = Process::start(produce, (q.clone(), 100, 20)).unwrap();
    let got: Vec<u64> = (0..20)
        .map(|_| q.get_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert_eq!(got, (100..120).collect::<Vec<_>>());
    alive.join().unwrap();
}

fn a_consumer_dying_mid_get_blocks_nobody() {
    let q = Queue::<u64>::new(4).unwrap();
    for i in 0..4 {
        q.put(&i).unwrap();
    }
    let dead = Process::start(
        |q: Queue<u64>| -> u64 { corepool::testing::abort_while_getting(&q) },
        q.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    // Value 0 died with its reader; the rest come out, and its slot is
    // reused by later puts instead of wedging the queue.
    assert_eq!(
        (0..3).map(|_| q.get().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for i in 10..14 {
        q.put_timeout(&i, Duration::from_secs(30)).unwrap();
    }
    assert_eq!(
        (0..4).map(|_| q.get().unwrap()).collect::<Vec<_>>(),
        vec![10, 11, 12, 13]
    );
}

fn blocked_calls_end_with_a_clear_error() {
    let q = Queue::<u64>::new(1).unwrap();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    q.put(&1).unwrap();
    assert!(matches!(
        q.put_timeout(&2, Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    // A consumer blocked in another process is released by close.
    let empty = Queue::<u64>::new(1).unwrap();
    let waiter = Process::start(|q: Queue<u64>| q.get().map_or(7, |_| 0), empty.clone()).unwrap();
    empty.close();
    assert_eq!(waiter.join().unwrap(), 7, "get returned QueueClosed");
}

fn an_endless_timeout_waits_without_panicking() {
    // `Instant::now() + Duration::MAX` overflows: such a timeout must mean
    // "no deadline", and a call that need not wait returns at once.
    let q = Queue::<u64>::new(2).unwrap();
    q.put_timeout(&1, Duration::MAX).unwrap();
    assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 1);
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.send(&2).unwrap();
    assert_eq!(b.recv_timeout(Duration::MAX).unwrap(), 2);
    // And one that must wait is released by the value it waits for.
    let child = Process::start(produce, (q.clone(), 5, 1)).unwrap();
    assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 5);
    assert_eq!(child.join().unwrap(), 1);
}

fn capacity_is_rounded_up_to_a_power_of_two() {
    let q = Queue::<u64>::new(5).unwrap();
    assert_eq!(q.capacity(), 8);
    for i in 0..8 {
        assert!(q.try_put(&i).unwrap(), "value {i} fits");
    }
    assert!(!q.try_put(&8).unwrap(), "the 9th finds it full");
    assert_eq!(q.len(), 8);
    // The same holds for a copy in another process.
    let got = Process::start(|q: Queue<u64>| q.capacity() as u64, q.clone()).unwrap();
    assert_eq!(got.join().unwrap(), 8);
    assert_eq!(Queue::<u64>::new(1).unwrap().capacity(), 1);
    assert!(matches!(
        Queue::<u64>::new((1 << 24) + 1),
        Err(Error::InvalidConfig { .. })
    ));
}

fn echo(end: PipeEnd<u64>) -> u64 {
    let mut n = 0;
    while let Ok(v) = end.recv() {
        end.send(&(v + 1)).unwrap();
        n += 1;
    }
    n
}

fn duplex_ping_pong_and_end_of_stream() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(echo, theirs).unwrap();
    for i in 0..1000 {
        mine.send(&i).unwrap();
        assert_eq!(mine.recv().unwrap(), i + 1);
    }
    assert!(matches!(
        mine.recv_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
    drop(mine); // the child's recv sees end of stream and it returns
    assert_eq!(child.join().unwrap(), 1000);
}

fn echo_the_end_in(q: Queue<PipeEnd<u64>>) -> u64 {
    echo(q.get().unwrap())
}

fn closing_an_end_sent_elsewhere_leaves_it_open() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let q = Queue::<PipeEnd<u64>>::new(1).unwrap();
    q.put(&theirs).unwrap(); // the child takes it from the queue
    let child = Process::start(echo_the_end_in, q.clone()).unwrap();
    // This copy no longer holds the end: neither `close` nor `drop` may
    // close it under the child.
    theirs.close();
    drop(theirs);
    for i in 0..10 {
        mine.send(&i).unwrap();
        assert_eq!(mine.recv().unwrap(), i + 1);
    }
    drop(mine);
    assert_eq!(child.join().unwrap(), 10);
}

fn send_three(end: PipeEnd<String>) {
    for s in ["a", "b", "c"] {
        end.send(&s.to_string()).unwrap();
    }
}

fn one_way_pipes_drain_then_end() {
    let (rx, tx) = Pipe::one_way::<String>().unwrap();
    assert!(matches!(
        rx.send(&"x".into()),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(tx.recv(), Err(Error::InvalidConfig { .. })));
    let child = Process::start(send_three, tx).unwrap();
    child.join().unwrap();
    // The child dropped its end on return: what it sent is still there.
    let got: Vec<String> = (0..3).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(got, vec!["a", "b", "c"]);
    assert!(matches!(rx.recv(), Err(Error::EndOfStream)));
}

fn hold_forever(end: PipeEnd<u64>) -> u64 {
    let _keep = end;
    loop {
        std::hint::spin_loop();
    }
}

fn a_dead_peer_ends_blocked_calls() {
    // recv blocked on a peer that is killed.
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(hold_forever, theirs).unwrap();
    let killer = std::thread::spawn(move || {
        child.kill().unwrap();
        child.join_timeout(Duration::from_secs(30))
    });
    assert!(
        matches!(mine.recv(), Err(Error::EndOfStream)),
        "no hang on a dead peer"
    );
    assert!(killer.join().unwrap());

    // send blocked on a full pipe whose reader is killed.
    let (mine, theirs) = Pipe::with_capacity::<u64>(2, 64, true).unwrap();
    let child = Process::start(hold_forever, theirs).unwrap();
    let killer = std::thread::spawn(move || {
        child.kill().unwrap();
        child.join_timeout(Duration::from_secs(30))
    });
    let mut result = Ok(());
    for i in 0..100 {
        result = mine.send(&i);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(Error::EndOfStream)));
    assert!(killer.join().unwrap());

    // A peer known dead is the end of the stream even for a zero timeout.
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(hold_forever, theirs).unwrap();
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(30)));
    assert!(matches!(
        mine.recv_timeout(Duration::ZERO),
        Err(Error::EndOfStream)
    ));

    // A loop of try_recv sees a peer that died while it polled (its
    // `/proc` look is rate-limited, not skipped).
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(hold_forever, theirs).unwrap();
    assert_eq!(mine.try_recv().unwrap(), None, "alive, nothing sent");
    child.kill().unwrap();
    assert!(child.join_timeout(Duration::from_secs(30)));
    let end = loop {
        match mine.try_recv() {
            Ok(None) => std::hint::spin_loop(), // the watchdog bounds this
            other => break other,
        }
    };
    assert!(matches!(end, Err(Error::EndOfStream)), "{end:?}");
}

fn close_is_end_of_stream_after_the_data() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.send(&1).unwrap();
    a.close();
    assert_eq!(b.recv().unwrap(), 1);
    assert!(matches!(b.recv(), Err(Error::EndOfStream)));
    assert!(matches!(b.send(&2), Err(Error::EndOfStream)));
}

fn try_recv_and_poll_look_without_waiting_or_taking() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    assert_eq!(b.try_recv().unwrap(), None, "nothing sent yet");
    assert!(!b.poll(Duration::ZERO).unwrap());
    assert!(
        !b.poll(Duration::from_millis(5)).unwrap(),
        "times out empty"
    );
    for i in 0..3 {
        a.send(&i).unwrap();
    }
    assert!(b.poll(Duration::ZERO).unwrap());
    assert!(
        b.poll(Duration::from_secs(30)).unwrap(),
        "polling twice takes nothing"
    );
    assert_eq!(b.try_recv().unwrap(), Some(0));
    assert_eq!(b.recv().unwrap(), 1, "order kept");
    assert!(b.poll(Duration::MAX).unwrap());
    assert_eq!(b.try_recv().unwrap(), Some(2));
    assert_eq!(b.try_recv().unwrap(), None);

    // A value sent by another process while we poll wakes the poll.
    let (rx, tx) = Pipe::one_way::<String>().unwrap();
    let child = Process::start(send_three, tx).unwrap();
    assert!(rx.poll(Duration::MAX).unwrap());
    let got: Vec<String> = (0..3).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(got, vec!["a", "b", "c"], "poll lost or reordered nothing");
    child.join().unwrap();
    assert!(rx.poll(Duration::MAX).unwrap(), "end of stream");
    assert!(matches!(rx.try_recv(), Err(Error::EndOfStream)));
}

fn try_recv_and_poll_after_the_peer_closes() {
    let (a, b) = Pipe::duplex::<u64>().unwrap();
    a.send(&1).unwrap();
    drop(a);
    assert!(b.poll(Duration::ZERO).unwrap(), "a value is left");
    assert_eq!(b.try_recv().unwrap(), Some(1), "sent before the close");
    assert!(
        b.poll(Duration::ZERO).unwrap(),
        "end of stream reads as ready"
    );
    assert!(b.poll(Duration::MAX).unwrap(), "and does not wait");
    assert!(matches!(b.try_recv(), Err(Error::EndOfStream)));
    assert!(matches!(b.recv(), Err(Error::EndOfStream)));

    // The send-only end of a one-way pipe cannot receive, however it asks.
    let (rx, tx) = Pipe::one_way::<u64>().unwrap();
    assert!(matches!(tx.try_recv(), Err(Error::InvalidConfig { .. })));
    assert!(matches!(
        tx.poll(Duration::ZERO),
        Err(Error::InvalidConfig { .. })
    ));
    tx.send(&5).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(5));
}

fn poll_returns_when_the_peer_process_dies() {
    let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
    let child = Process::start(hold_forever, theirs).unwrap();
    assert!(!mine.poll(Duration::ZERO).unwrap(), "alive and silent");
    assert_eq!(mine.try_recv().unwrap(), None, "alive and silent");
    let killer = std::thread::spawn(move || {
        child.kill().unwrap();
        child.join_timeout(Duration::from_secs(30))
    });
    // No deadline: only the peer's death can end this wait.
    assert!(mine.poll(Duration::MAX).unwrap(), "death is end of stream");
    assert!(killer.join().unwrap());
    assert!(mine.poll(Duration::ZERO).unwrap());
    assert!(matches!(mine.try_recv(), Err(Error::EndOfStream)));
    assert!(matches!(mine.recv(), Err(Error::EndOfStream)));
    assert!(matches!(mine.send(&1), Err(Error::EndOfStream)));
}

fn bump(arg: (Value<u64>, AtomicValue<u64>)) -> u64 {
    let (v, a) = arg;
    for _ in 0..1000 {
        v.update(|x| *x += 1).unwrap();
        a.fetch_add(1);
    }
    0
}

fn values_are_shared_and_a_dead_holder_cannot_wedge_them() {
    let v = Value::new(0u64).unwrap();
    let a = AtomicValue::<u64>::new(0).unwrap();
    let kids: Vec<_> = (0..3)
        .map(|_| Process::start(bump, (v.clone(), a.clone())).unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    assert_eq!((v.get(), a.load()), (3000, 3000), "no update lost");
    // A process dies holding the lock, in the middle of a write.
    let dead = Process::start(
        |v: Value<u64>| -> u64 { corepool::testing::abort_while_locked(&v) },
        v.clone(),
    )
    .unwrap();
    assert!(dead.join().is_err());
    assert_eq!(v.get(), 3000, "readers repair it");
    v.update(|x| *x += 1).unwrap();
    assert_eq!(v.get(), 3001, "writers take the lock over");
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        many_producers_and_consumers_across_processes,
        pool_workers_put_and_the_parent_gets,
        a_producer_dying_mid_put_blocks_nobody,
        a_consumer_dying_mid_get_blocks_nobody,
        blocked_calls_end_with_a_clear_error,
        an_endless_timeout_waits_without_panicking,
        capacity_is_rounded_up_to_a_power_of_two,
        duplex_ping_pong_and_end_of_stream,
        closing_an_end_sent_elsewhere_leaves_it_open,
        one_way_pipes_drain_then_end,
        a_dead_peer_ends_blocked_calls,
        close_is_end_of_stream_after_the_data,
        try_recv_and_poll_look_without_waiting_or_taking,
        try_recv_and_poll_after_the_peer_closes,
        poll_returns_when_the_peer_process_dies,
        values_are_shared_and_a_dead_holder_cannot_wedge_them,
    ]);
}
