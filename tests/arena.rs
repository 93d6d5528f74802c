//! A pool's argument arena: task arguments larger than a ring message are
//! copied into one sealed memfd per pool and decoded by the workers in
//! place; a block is reused once its task's outcome is in, never while a
//! worker may still read it; no room means a one-off spill, never a failure
//! or a wait; nothing is left behind (the harness checks descriptors and
//! `/dev/shm` after each test).

mod common;

use corepool::{AtomicValue, Error, Pool};

const MIB: usize = 1 << 20;

/// `len` bytes that are not all alike (a lost or shifted block shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// How this worker got its argument, judged from its memory map while the
/// task runs: a one-off spill is mapped for the task alone.
#[derive(Debug, PartialEq, Eq, corepool::Wire)]
enum Came {
    Arena,
    OneOff,
}

fn came() -> Came {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if maps.contains("memfd:corepool-spill") {
        Came::OneOff
    } else {
        assert!(maps.contains("memfd:corepool-arena"), "neither kind mapped");
        Came::Arena
    }
}

/// The argument's checksum and how it came.
fn sum_and_way(v: Vec<u8>) -> (u64, Came) {
    (v.iter().map(|&b| u64::from(b)).sum(), came())
}

fn sum(v: &[u8]) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

/// As `sum_and_way`, after waiting for `gate` to open (set to 1).
fn gated((v, gate): (Vec<u8>, AtomicValue<u64>)) -> (u64, Came) {
    // Bounded by the harness's watchdog; the test opens it.
    while gate.load() == 0 {
        std::thread::yield_now();
    }
    sum_and_way(v)
}

/// Says it started, then waits for a gate nobody opens (terminated).
fn started_then_stuck((v, started): (Vec<u8>, AtomicValue<u64>)) -> u64 {
    started.store(1);
    loop {
        std::hint::black_box(&v);
        std::thread::park();
    }
}

/// Dies on its first run (`once` still 0), returns the checksum on the next.
fn die_once((v, once): (Vec<u8>, AtomicValue<u64>)) -> u64 {
    if once.swap(1) == 0 {
        std::process::abort();
    }
    sum(&v)
}

fn aborts(_: Vec<u8>) -> u64 {
    std::process::abort()
}

fn arguments_go_through_the_arena_and_its_blocks_are_reused() {
    // 24 MiB holds two 8 MiB arguments: twenty in turn reuse the same
    // blocks, each once its outcome is in.
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(24 * MIB)
        .build()
        .unwrap();
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        None,
        "made lazily"
    );
    for i in 0..20u8 {
        let data = pattern(8 * MIB, i);
        assert_eq!(
            pool.apply(sum_and_way, data.clone()).unwrap(),
            (sum(&data), Came::Arena)
        );
    }
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 24 * MIB)),
        "every block back, none kept"
    );
    // In flight together: both fit, both come back.
    let handles: Vec<_> = (0..2u8)
        .map(|i| pool.apply_async(sum_and_way, pattern(8 * MIB, i)).unwrap())
        .collect();
    for (i, h) in (0..2u8).zip(handles) {
        assert_eq!(h.get().unwrap().0, sum(&pattern(8 * MIB, i)));
    }
    // `map` chunks that spill take the arena too.
    let items: Vec<Vec<u8>> = (0..4u8).map(|i| pattern(MIB, i)).collect();
    let got = pool.map(sum_and_way, items.clone()).unwrap();
    assert_eq!(
        got,
        items
            .iter()
            .map(|v| (sum(v), Came::Arena))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 24 * MIB))
    );
}

fn a_full_arena_or_a_larger_value_spills_one_off() {
    // 12 MiB: one 8 MiB argument at a time.
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(12 * MIB)
        .build()
        .unwrap();
    let gate = AtomicValue::new(0u64).unwrap();
    let first = pattern(8 * MIB, 1);
    let second = pattern(8 * MIB, 2);
    let a = pool
        .apply_async(gated, (first.clone(), gate.clone()))
        .unwrap();
    // The first holds its block until its outcome, which waits for the gate.
    let b = pool.apply_async(sum_and_way, second.clone()).unwrap();
    gate.store(1);
    assert_eq!(a.get().unwrap(), (sum(&first), Came::Arena));
    assert_eq!(b.get().unwrap(), (sum(&second), Came::OneOff));
    // Larger than the whole arena.
    let big = pattern(16 * MIB, 3);
    assert_eq!(
        pool.apply(sum_and_way, big.clone()).unwrap(),
        (sum(&big), Came::OneOff)
    );
    assert_eq!(
        pool.apply(sum_and_way, first.clone()).unwrap(),
        (sum(&first), Came::Arena)
    );
    // No arena at all.
    let none = Pool::builder()
        .workers(1)
        .arg_arena_bytes(0)
        .build()
        .unwrap();
    assert_eq!(
        none.apply(sum_and_way, first.clone()).unwrap(),
        (sum(&first), Came::OneOff)
    );
    assert_eq!(corepool::testing::arg_arena_usage(&none), None);
}

fn a_worker_death_returns_the_block_and_a_retry_keeps_it() {
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    // Dies with the argument mapped: the task fails, its block comes back
    // once the worker is known dead.
    let got = pool.apply(aborts, pattern(8 * MIB, 4));
    assert!(matches!(got, Err(Error::WorkerDied { .. })), "{got:?}");
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
    // The replacement maps the arena anew and decodes from the same block.
    let data = pattern(8 * MIB, 5);
    assert_eq!(
        pool.apply(sum_and_way, data.clone()).unwrap(),
        (sum(&data), Came::Arena)
    );
    // A retried task keeps its block (and its bytes) until its final outcome.
    let pool = Pool::builder()
        .workers(1)
        .retries(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    for seed in 0..3u8 {
        let once = AtomicValue::new(0u64).unwrap();
        let data = pattern(8 * MIB, seed);
        assert_eq!(
            pool.apply(die_once, (data.clone(), once)).unwrap(),
            sum(&data)
        );
    }
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
}

fn a_terminated_task_never_gives_its_block_back() {
    // `terminate` fails the task before its worker is dead: the worker may
    // still be reading the block, so it is never reused.
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    let started = AtomicValue::new(0u64).unwrap();
    let task = pool
        .apply_async(started_then_stuck, (pattern(8 * MIB, 6), started.clone()))
        .unwrap();
    // Bounded by the harness's watchdog.
    while started.load() == 0 {
        std::thread::yield_now();
    }
    pool.terminate();
    pool.join().unwrap();
    assert!(matches!(task.get(), Err(Error::Cancelled)));
    let (kept, free) = corepool::testing::arg_arena_usage(&pool).unwrap();
    assert!(kept >= 8 * MIB, "kept {kept}");
    assert_eq!(kept + free, 16 * MIB);
}

fn thousands_of_arguments_leave_nothing_behind() {
    // Small rings, so that a 4 KiB argument spills: every one through the
    // arena, nothing grows.
    let pool = Pool::builder()
        .workers(2)
        .ring_bytes(4096)
        .arg_arena_bytes(MIB)
        .build()
        .unwrap();
    let value = pattern(4096, 7);
    let round = |n: usize| {
        let handles: Vec<_> = (0..n)
            .map(|_| pool.apply_async(sum_and_way, value.clone()).unwrap())
            .collect();
        for h in handles {
            assert_eq!(h.get().unwrap().0, sum(&value));
        }
    };
    round(50); // warm up: buffers, caches, the arena's mapping
    let parent = common::holdings(0);
    let worker = pool.apply(common::holdings, 0).unwrap();
    round(2000);
    common::assert_no_growth("parent", parent, common::holdings(0));
    common::assert_no_growth("worker", worker, pool.apply(common::holdings, 0).unwrap());
    assert_eq!(corepool::testing::arg_arena_usage(&pool), Some((0, MIB)));
}

/// `value` encoded, as a transport would receive it.
fn encoded(value: &Vec<u8>) -> Vec<u8> {
    let mut out = corepool::Encoder::new();
    corepool::Wire::encode(value, &mut out);
    out.finish().unwrap()
}

/// Submits `arg`'s first `len` bytes and waits for the decoded result.
fn run_raw_argument(pool: &Pool, arg: corepool::RawArgument<'_>, len: usize) -> (u64, Came) {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = corepool::RawTask::one(sum_and_way);
    pool.submit_raw_argument(task, arg, len, move |r| tx.send(r).unwrap())
        .unwrap();
    let bytes = rx.recv().unwrap().unwrap();
    corepool::Wire::decode(&mut bytes.as_slice()).unwrap()
}

fn a_raw_argument_is_filled_in_place_and_decoded_from_the_arena() {
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    for seed in 0..6u8 {
        // 1 MiB fits a ring message: it goes through the arena all the same,
        // followed by a trailer nobody reads.
        let data = pattern(MIB, seed);
        let bytes = encoded(&data);
        let mut arg = pool.raw_argument(bytes.len() + 16).unwrap();
        assert_eq!(arg.len(), bytes.len() + 16);
        arg[..bytes.len()].copy_from_slice(&bytes);
        arg[bytes.len()..].fill(0xee);
        assert_eq!(
            run_raw_argument(&pool, arg, bytes.len()),
            (sum(&data), Came::Arena)
        );
        assert_eq!(
            corepool::testing::arg_arena_usage(&pool),
            Some((0, 16 * MIB)),
            "the block is back once the outcome is in"
        );
    }
    // Four in flight at once, each in its own block.
    let (tx, rx) = std::sync::mpsc::channel();
    for seed in 0..4u8 {
        let bytes = encoded(&pattern(2 * MIB, seed));
        let mut arg = pool.raw_argument(bytes.len()).unwrap();
        arg.copy_from_slice(&bytes);
        let tx = tx.clone();
        pool.submit_raw_argument(
            corepool::RawTask::one(sum_and_way),
            arg,
            bytes.len(),
            move |r| tx.send((seed, r)).unwrap(),
        )
        .unwrap();
    }
    for _ in 0..4 {
        let (seed, r) = rx.recv().unwrap();
        let got: (u64, Came) = corepool::Wire::decode(&mut r.unwrap().as_slice()).unwrap();
        assert_eq!(got.0, sum(&pattern(2 * MIB, seed)));
    }
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
}

fn a_raw_argument_needs_room_and_gives_it_back_unsubmitted() {
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(8 * MIB)
        .build()
        .unwrap();
    assert!(
        pool.raw_argument(8 * MIB + 1).is_none(),
        "larger than the arena"
    );
    let first = pool.raw_argument(6 * MIB).unwrap();
    assert!(pool.raw_argument(4 * MIB).is_none(), "no room left");
    drop(first);
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 8 * MIB)),
        "dropped unsubmitted: given back"
    );
    // A length past the memory is refused, and the memory comes back.
    let arg = pool.raw_argument(1024).unwrap();
    let (tx, _rx) = std::sync::mpsc::channel::<corepool::Result<Vec<u8>>>();
    let task = corepool::RawTask::one(sum_and_way);
    let refused = pool.submit_raw_argument(task, arg, 1025, move |r| tx.send(r).unwrap());
    assert!(matches!(
        refused,
        Err(Error::ArgumentTooLarge {
            size: 1025,
            max: 1024
        })
    ));
    // So does a closed pool's.
    let arg = pool.raw_argument(1024).unwrap();
    pool.close();
    let refused = pool.submit_raw_argument(task, arg, 8, |_| panic!("not called"));
    assert!(matches!(refused, Err(Error::PoolClosed)), "{refused:?}");
    // And a closed pool lends no memory to fill for nothing (a user trial).
    assert!(pool.raw_argument(1024).is_none());
    pool.join().unwrap();
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 8 * MIB))
    );
    // No arena: none, and `submit_raw` takes the bytes instead.
    let none = Pool::builder()
        .workers(1)
        .arg_arena_bytes(0)
        .build()
        .unwrap();
    assert!(none.raw_argument(16).is_none());
}

fn a_raw_argument_of_another_pool_is_copied() {
    let ours = Pool::builder().workers(1).build().unwrap();
    let other = Pool::builder().workers(1).build().unwrap();
    let data = pattern(MIB, 9);
    let bytes = encoded(&data);
    let mut arg = other.raw_argument(bytes.len()).unwrap();
    arg.copy_from_slice(&bytes);
    assert_eq!(run_raw_argument(&ours, arg, bytes.len()).0, sum(&data));
    let (kept, free) = corepool::testing::arg_arena_usage(&other).unwrap();
    assert_eq!(kept, 0);
    assert!(
        other.raw_argument(free).is_some(),
        "given back after the copy"
    );
}

fn a_terminated_raw_argument_task_never_gives_its_block_back() {
    let pool = Pool::builder()
        .workers(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    let started = AtomicValue::new(0u64).unwrap();
    let mut out = corepool::Encoder::new();
    corepool::Wire::encode(&(pattern(8 * MIB, 6), started.clone()), &mut out);
    let bytes = out.finish().unwrap();
    let mut arg = pool.raw_argument(bytes.len()).unwrap();
    arg.copy_from_slice(&bytes);
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit_raw_argument(
        corepool::RawTask::one(started_then_stuck),
        arg,
        bytes.len(),
        move |r| tx.send(r).unwrap(),
    )
    .unwrap();
    // Bounded by the harness's watchdog.
    while started.load() == 0 {
        std::thread::yield_now();
    }
    pool.terminate();
    pool.join().unwrap();
    assert!(matches!(rx.recv().unwrap(), Err(Error::Cancelled)));
    let (kept, free) = corepool::testing::arg_arena_usage(&pool).unwrap();
    assert!(kept >= 8 * MIB, "kept {kept}");
    assert_eq!(kept + free, 16 * MIB);
}

/// The item back, and (every 4096th item, so that the maps stay cheap) how
/// this worker got its chunk.
fn echo_and_way(x: u64) -> (u64, Option<Came>) {
    (x, (x % 4096 == 0).then(came))
}

fn expected(n: u64) -> Vec<(u64, Option<Came>)> {
    (0..n)
        .map(|x| (x, (x % 4096 == 0).then_some(Came::Arena)))
        .collect()
}

fn a_map_of_plain_data_gathers_its_chunks_in_the_arena() {
    let pool = Pool::builder()
        .workers(2)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    let input: Vec<u64> = (0..300_000).collect();
    // The default chunks (256 KiB), chunks that end short, one item over.
    for n in [300_000, 131_073, 65_537] {
        let got = pool.map(echo_and_way, input[..n].iter().copied()).unwrap();
        assert_eq!(got, expected(n as u64), "{n} items");
    }
    // The same by `map_async`, every chunk in the arena at once.
    let got = pool
        .map_async(echo_and_way, input.clone())
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(got, expected(300_000));
    // Every block back once its chunk's result is in.
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
    // Iterators that misreport their length: what comes is what counts.
    for (real, claimed) in [(100_000, 10_000), (10_000, 100_000), (0, 50_000)] {
        let liar = common::Liar {
            next: 0,
            real,
            claimed,
        };
        let got = pool.chunked(4096).unwrap().map(echo_and_way, liar).unwrap();
        assert_eq!(got, expected(real), "{real} vs {claimed}");
    }
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
}

fn dies_at(x: u64) -> u64 {
    if x == 70_000 {
        std::process::abort();
    }
    x
}

fn a_map_chunk_in_the_arena_survives_its_worker_and_a_small_arena_falls_back() {
    // A worker dies in the middle of a chunk: with a retry, the chunk runs
    // again from its block on the replacement (which dies again: the map
    // fails), and the block comes back once the outcome is final.
    let pool = Pool::builder()
        .workers(2)
        .retries(1)
        .arg_arena_bytes(16 * MIB)
        .build()
        .unwrap();
    let got = pool.map(dies_at, 0..200_000u64);
    assert!(matches!(got, Err(Error::WorkerDied { .. })), "{got:?}");
    // The chunks submitted before the failure still run (their blocks come
    // back as they end); none was kept for ever.
    assert_eq!(corepool::testing::arg_arena_usage(&pool).unwrap().0, 0);
    let input: Vec<u64> = (0..200_000).collect();
    assert_eq!(pool.map(dies_at, 0..70_000u64).unwrap(), input[..70_000]);
    pool.close();
    pool.join().unwrap();
    assert_eq!(
        corepool::testing::arg_arena_usage(&pool),
        Some((0, 16 * MIB))
    );
    // An arena with room for one 256 KiB chunk at a time, and none: the
    // chunks that find no room go by the ring, and the results are the same.
    for bytes in [320 << 10, 0] {
        let small = Pool::builder()
            .workers(2)
            .arg_arena_bytes(bytes)
            .build()
            .unwrap();
        let got = small.map(|x: u64| x, input.iter().copied()).unwrap();
        assert_eq!(got, input, "an arena of {bytes} bytes");
        let got = small
            .map_async(|x: u64| x, input.clone())
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(got, input, "an arena of {bytes} bytes");
    }
}

fn main() {
    corepool::init();
    common::run(common::tests![
        arguments_go_through_the_arena_and_its_blocks_are_reused,
        a_full_arena_or_a_larger_value_spills_one_off,
        a_worker_death_returns_the_block_and_a_retry_keeps_it,
        a_terminated_task_never_gives_its_block_back,
        thousands_of_arguments_leave_nothing_behind,
        a_raw_argument_is_filled_in_place_and_decoded_from_the_arena,
        a_raw_argument_needs_room_and_gives_it_back_unsubmitted,
        a_raw_argument_of_another_pool_is_copied,
        a_terminated_raw_argument_task_never_gives_its_block_back,
        a_map_of_plain_data_gathers_its_chunks_in_the_arena,
        a_map_chunk_in_the_arena_survives_its_worker_and_a_small_arena_falls_back,
    ]);
}
