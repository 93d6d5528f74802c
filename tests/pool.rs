//! Multi-process tests of every `Pool` method. Runs with its own `main`
//! (`harness = false`) because workers re-execute this binary.

mod common;

use corepool::{Callbacks, Error, ExitCause, Pinning, Plain, Pool, SharedArray};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

fn fails_above_5(n: u64) -> String {
    if n > 5 {
        panic!("n > 5: {n}");
    }
    format!("return = {n}")
}

fn pool2() -> Pool {
    Pool::builder().workers(2).build().expect("pool starts")
}

fn apply_round_trips() {
    let pool = pool2();
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(
        pool.apply(|s: String| s.to_uppercase(), "abc".to_string())
            .unwrap(),
        "ABC"
    );
}

fn apply_async_handles() {
    let pool = pool2();
    let handles: Vec<_> = (0..1000u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    let h = pool.apply_async(square, 3).unwrap();
    h.wait();
    assert!(h.ready());
    assert_eq!(h.successful(), Some(true));
    assert_eq!(h.get_timeout(Duration::from_secs(30)).unwrap(), 9);
}

fn panics_reach_the_error_callback_and_the_worker_survives() {
    let pool = Pool::builder().workers(3).build().unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let err = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..10u64 {
        let (ok, err) = (ok.clone(), err.clone());
        let cb = Callbacks::new()
            .on_success(move |v: &String| {
                assert!(v.starts_with("return = "));
                ok.fetch_add(1, Ordering::SeqCst);
            })
            .on_error(move |e| {
                assert!(
                    matches!(e, Error::Panicked { message } if message.contains("n > 5")),
                    "{e}"
                );
                err.fetch_add(1, Ordering::SeqCst);
            });
        handles.push(pool.apply_async_with(fails_above_5, i, cb).unwrap());
    }
    for h in &handles {
        h.wait();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 6);
    assert_eq!(err.load(Ordering::SeqCst), 4);
    let pids_before = pool.pids();
    assert_eq!(
        pool.apply(square, 4).unwrap(),
        16,
        "workers go on after a panic"
    );
    assert_eq!(pool.pids(), pids_before, "no worker was replaced");
    pool.close();
    pool.join().unwrap();
}

fn map_family() {
    let pool = pool2();
    let expect: Vec<u64> = (0..10_000u64).map(square).collect();
    assert_eq!(pool.map(square, 0..10_000u64).unwrap(), expect);
    assert_eq!(
        pool.chunked(1).unwrap().map(square, 0..10_000u64).unwrap(),
        expect
    );
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        pool.chunked(7)
            .unwrap()
            .map_async(square, 0..100u64)
            .unwrap()
            .get()
            .unwrap(),
        expect[..100]
    );
    let lazy: Vec<u64> = pool
        .chunked(10)
        .unwrap()
        .imap(square, 0..1000u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(lazy, expect[..1000]);
    let mut unordered: Vec<u64> = pool
        .chunked(10)
        .unwrap()
        .imap_unordered(square, 0..1000u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, expect[..1000]);
    let star = pool
        .starmap(|a: u64, b: u64| a * b, (0..100u64).map(|i| (i, i)))
        .unwrap();
    assert_eq!(star, expect[..100]);
    assert!(matches!(pool.chunked(0), Err(Error::InvalidConfig { .. })));
    let failing = pool.chunked(2).unwrap().map(fails_above_5, 0..10u64);
    assert!(matches!(failing, Err(Error::Panicked { .. })));
    // Results that are not plain data, and plain structs.
    let strings = pool
        .chunked(7)
        .unwrap()
        .map(|x: u64| x.to_string(), 0..1000u64)
        .unwrap();
    assert_eq!(
        strings,
        (0..1000u64).map(|x| x.to_string()).collect::<Vec<_>>()
    );
    let pairs = pool
        .chunked(64)
        .unwrap()
        .map(|x: u64| Plain([x, x + 1]), 0..1000u64)
        .unwrap();
    assert!(pairs
        .iter()
        .enumerate()
        .all(|(i, p)| p.0 == [i as u64, i as u64 + 1]));
    // Chunks that come back out of order still land in order.
    let flag = SharedArray::<u64>::new(1).unwrap();
    let items: Vec<(SharedArray<u64>, u64)> = (0..64u64).map(|i| (flag.clone(), i)).collect();
    let ordered = pool
        .chunked(1)
        .unwrap()
        .map(first_waits_for_last, items)
        .unwrap();
    assert_eq!(ordered, (0..64u64).collect::<Vec<_>>());
}

/// Plain items and results of every width (gathered straight into a chunk's
/// encoding, read and written in place by the worker, copied from the result
/// ring straight into the output), mixed with items or results that are not
/// plain (the general path on one side only), through every map method.
fn plain_data_of_every_width_maps_in_one_pass() {
    let pool = pool2();
    let n = 5000u64;
    let bytes = pool.map(|x: u64| x as u8, 0..n).unwrap();
    assert_eq!(bytes, (0..n).map(|x| x as u8).collect::<Vec<_>>());
    let halves = pool
        .map(|x: i16| f32::from(x) / 2.0, -1000..1000i16)
        .unwrap();
    assert!(halves
        .iter()
        .zip(-1000..1000i16)
        .all(|(h, x)| *h == f32::from(x) / 2.0));
    let wide = pool
        .chunked(33)
        .unwrap()
        .map(|x: u128| x << 64 | 1, (0..n).map(u128::from))
        .unwrap();
    assert!(wide
        .iter()
        .zip(0..n)
        .all(|(w, x)| *w == u128::from(x) << 64 | 1));
    // An odd size (3 bytes): unaligned in every chunk but the first.
    let triples = pool
        .chunked(17)
        .unwrap()
        .map(
            |p: Plain<[u8; 3]>| Plain([p.0[2], p.0[1], p.0[0]]),
            (0..n).map(|x| Plain([x as u8, (x >> 8) as u8, 7])),
        )
        .unwrap();
    assert!(triples
        .iter()
        .zip(0..n)
        .all(|(t, x)| t.0 == [7, (x >> 8) as u8, x as u8]));
    // Plain in, not plain out; and the other way round.
    let text = pool
        .chunked(9)
        .unwrap()
        .map(|x: f64| format!("{x}"), [0.5f64, -1.25])
        .unwrap();
    assert_eq!(text, ["0.5", "-1.25"]);
    let lengths = pool
        .map(|s: String| s.len() as u32, (0..300).map(|i| "x".repeat(i)))
        .unwrap();
    assert_eq!(lengths, (0..300u32).collect::<Vec<_>>());
    // An iterator that does not know its length, and the other methods.
    let odd: Vec<u32> = pool
        .map(|x: u32| x * 3, (0..n as u32).filter(|x| x % 2 == 1))
        .unwrap();
    assert_eq!(
        odd,
        (0..n as u32)
            .filter(|x| x % 2 == 1)
            .map(|x| x * 3)
            .collect::<Vec<_>>()
    );
    let pending = pool.map_async(|x: i64| -x, -500..500i64).unwrap();
    assert_eq!(
        pending.get().unwrap(),
        (-500..500i64).map(|x| -x).collect::<Vec<_>>()
    );
    let lazy: Vec<u16> = pool
        .chunked(64)
        .unwrap()
        .imap(|x: u16| x.wrapping_mul(3), 0..2000u16)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        lazy,
        (0..2000u16).map(|x| x.wrapping_mul(3)).collect::<Vec<_>>()
    );
    let mut unordered: Vec<u8> = pool
        .chunked(64)
        .unwrap()
        .imap_unordered(|x: u8| x / 2, 0..=255u8)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..=255u8).map(|x| x / 2).collect::<Vec<_>>());
    let star = pool
        .starmap(
            |a: u32, b: u32| u64::from(a) * u64::from(b),
            (0..100u32).map(|i| (i, i + 1)),
        )
        .unwrap();
    assert_eq!(star, (0..100u64).map(|i| i * (i + 1)).collect::<Vec<_>>());
}

/// Item 0 holds its worker until item 63 has run (or a while has passed,
/// should 63 be queued behind it), so later chunks finish first.
fn first_waits_for_last(arg: (SharedArray<u64>, u64)) -> u64 {
    let (flag, i) = arg;
    if i == 63 {
        flag.set(0, 1).unwrap();
    } else if i == 0 {
        let give_up = std::time::Instant::now() + Duration::from_secs(2);
        while flag.get(0).unwrap() == 0 && std::time::Instant::now() < give_up {
            std::hint::spin_loop();
        }
    }
    i
}

fn close_join_and_closed_errors() {
    let pool = pool2();
    assert!(matches!(pool.join(), Err(Error::JoinWhileOpen)));
    let h = pool.apply_async(square, 5).unwrap();
    pool.close();
    assert!(matches!(
        pool.apply_async(square, 1),
        Err(Error::PoolClosed)
    ));
    pool.join().unwrap();
    assert_eq!(h.get().unwrap(), 25, "close lets submitted work finish");
    assert!(pool.pids().is_empty());
}

fn spin_forever(_: u64) -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

fn terminate_cancels_pending_work() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let stuck = pool.apply_async(spin_forever, 0).unwrap();
    let queued: Vec<_> = (0..10)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    pool.terminate();
    pool.join().unwrap();
    assert_eq!(stuck.get().unwrap_err(), Error::Cancelled);
    for q in queued {
        assert_eq!(q.get().unwrap_err(), Error::Cancelled);
    }
}

fn drop_with_work_pending_never_hangs() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let stuck: Vec<_> = (0..4)
        .map(|i| pool.apply_async(spin_forever, i).unwrap())
        .collect();
    drop(pool);
    for h in stuck {
        assert_eq!(h.get().unwrap_err(), Error::Cancelled);
    }
}

fn workers_are_pinned_to_their_cpus() {
    let allowed = corepool::info::allowed_cpus().unwrap();
    let pool = Pool::builder().build().unwrap();
    assert_eq!(pool.workers(), allowed.len());
    for (pid, cpu) in pool.pids().iter().zip(pool.cpus()) {
        let cpu = cpu.expect("pinned");
        assert_eq!(corepool::info::affinity_of(*pid).unwrap(), vec![cpu]);
    }
    let explicit = Pool::builder()
        .pinning(Pinning::Cpus(vec![allowed[0]]))
        .workers(2)
        .build()
        .unwrap();
    for pid in explicit.pids() {
        assert_eq!(corepool::info::affinity_of(pid).unwrap(), vec![allowed[0]]);
    }
    let unpinned = Pool::builder()
        .pinning(Pinning::None)
        .workers(1)
        .build()
        .unwrap();
    assert_eq!(
        corepool::info::affinity_of(unpinned.pids()[0]).unwrap(),
        allowed
    );
    let bad = Pool::builder()
        .pinning(Pinning::Cpus(vec![100_000]))
        .build();
    assert!(
        matches!(bad, Err(Error::CpuNotAllowed { cpu: 100_000, .. })),
        "{bad:?}"
    );
}

fn oversized_arguments_and_results_spill() {
    // Values larger than a ring message used to be typed errors
    // (`ArgumentTooLarge`, `ResultTooLarge`); they now travel in spills.
    let pool = Pool::builder()
        .workers(1)
        .ring_bytes(64 * 1024)
        .build()
        .unwrap();
    let big = vec![0u8; 100_000];
    let r = pool
        .apply_async(|v: Vec<u8>| v.len() as u64, big)
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(r, 100_000);
    let r = pool.apply(|n: u64| vec![1u8; n as usize], 100_000).unwrap();
    assert_eq!(r, vec![1u8; 100_000]);
    assert_eq!(
        pool.apply(|n: u64| vec![1u8; n as usize], 1000)
            .unwrap()
            .len(),
        1000
    );
}

fn init_counter() {
    std::env::set_var("COREPOOL_TEST_INIT", "ran");
}

fn initializer_runs_in_every_worker() {
    let pool = Pool::builder()
        .workers(2)
        .initializer(init_counter)
        .build()
        .unwrap();
    let seen = pool
        .chunked(1)
        .unwrap()
        .map(
            |_: u64| std::env::var("COREPOOL_TEST_INIT").unwrap_or_default(),
            0..8u64,
        )
        .unwrap();
    assert!(seen.iter().all(|s| s == "ran"));
}

fn initializer_panic_fails_build() {
    let r = Pool::builder()
        .workers(1)
        .initializer(|| panic!("no database"))
        .build();
    match r {
        Err(Error::WorkerStart { reason, .. }) => {
            assert!(reason.contains("no database"), "{reason}")
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
}

/// An initializer that ends the worker with `exit(0)` fails the build with
/// a message that says so (it read "exited with status 0 before returning
/// a result before attaching": a task's wording, twice).
fn initializer_exit_fails_build_saying_so() {
    let r = Pool::builder()
        .workers(1)
        .initializer(|| std::process::exit(0))
        .build();
    match r {
        Err(Error::WorkerStart { reason, .. }) => {
            assert!(reason.contains("exited with status 0"), "{reason}");
            assert!(reason.contains("initializer"), "{reason}");
            assert!(!reason.contains("result"), "{reason}");
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
}

/// Workers are named after the program in `ps`, `top` and `pgrep`, as
/// Python's workers are (they were all `exe`, the file the kernel saw
/// executed: `/proc/self/exe`).
fn workers_are_named_after_the_program() {
    let pool = Pool::new(1).unwrap();
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    let mine = comm(std::process::id() as i32);
    assert_ne!(mine.trim(), "exe");
    assert_eq!(comm(pool.pids()[0]), mine);
}

static SETTING: std::sync::OnceLock<(String, SharedArray<u64>)> = std::sync::OnceLock::new();

fn remember(setting: (String, SharedArray<u64>)) {
    // Count the initializer runs in the array the parent handed over.
    let runs = setting.1.get(0).unwrap();
    setting.1.set(0, runs + 1).unwrap();
    SETTING.set(setting).unwrap();
}

fn recall(_: u64) -> (String, u64) {
    let (name, runs) = SETTING.get().expect("the initializer ran");
    (name.clone(), runs.get(0).unwrap())
}

fn initializer_with_hands_every_worker_its_argument() {
    // The pool holds the only handle to the array: replacements started
    // later must still be able to open it.
    let runs = SharedArray::<u64>::new(1).unwrap();
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_child(3) // replacements must get the argument too
        .initializer_with(remember, ("blue".to_string(), runs))
        .build()
        .unwrap();
    let seen = pool.chunked(1).unwrap().map(recall, 0..30u64).unwrap();
    assert!(seen.iter().all(|s| s.0 == "blue"), "{seen:?}");
    // Two first workers, then one per 3 tasks: more runs than workers.
    assert!(seen.iter().any(|s| s.1 > 2), "{seen:?}");

    let too_big = Pool::builder()
        .workers(1)
        .initializer_with(|_: Vec<u8>| {}, vec![0u8; 17 << 20])
        .build()
        .unwrap_err();
    assert!(matches!(too_big, Error::InvalidConfig { .. }), "{too_big}");
}

fn max_tasks_per_child_replaces_workers_without_losing_work() {
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_child(10)
        .build()
        .unwrap();
    let pids: Vec<u64> = pool
        .chunked(1)
        .unwrap()
        .map(|_: u64| std::process::id() as u64, 0..200u64)
        .unwrap();
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert!(
        distinct.len() >= 20,
        "200 tasks at 10 per child need at least 20 processes, saw {}",
        distinct.len()
    );
    pool.close();
    pool.join().unwrap();
}

fn long_tasks_do_not_leave_a_core_idle() {
    // One long task that ends only once more than half of the 60 short
    // ones have run: the other worker must take them while it runs. No
    // clock is involved, so load cannot fail it; a pool that queued the
    // short tasks behind the long one would see it give up after its
    // timeout and run them on its worker, which the assertion catches.
    const SHORT: usize = 60;
    const ELSEWHERE: usize = SHORT / 2 + 1;
    let pool = Pool::builder().workers(2).build().unwrap();
    fn work((long, done): (bool, corepool::Semaphore)) -> u64 {
        if long {
            for _ in 0..ELSEWHERE {
                match done.acquire_timeout(Duration::from_secs(60)) {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
            }
        } else {
            done.release().unwrap();
        }
        std::process::id() as u64
    }
    let done = corepool::Semaphore::new(0).unwrap();
    let mut items = vec![(true, done.clone())];
    items.extend(std::iter::repeat_n((false, done), SHORT));
    let pids = pool.chunked(1).unwrap().map(work, items).unwrap();
    let long_pid = pids[0];
    let short_on_long = pids[1..].iter().filter(|&&p| p == long_pid).count();
    assert!(
        short_on_long < SHORT - ELSEWHERE + 1,
        "{short_on_long} of {SHORT} short tasks waited behind the long one"
    );
}

fn pools_from_many_threads() {
    let pool = Arc::new(pool2());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    assert_eq!(
                        pool.apply(square, t * 1000 + i).unwrap(),
                        (t * 1000 + i).pow(2)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn many_pools_leave_no_zombies() {
    for _ in 0..100 {
        let pool = Pool::builder()
            .workers(2)
            .pinning(Pinning::None)
            .build()
            .unwrap();
        assert_eq!(pool.apply(square, 2).unwrap(), 4);
    }
    common::eventually("no children but the fork server", || {
        common::children_but_the_fork_server().is_empty()
    });
}

fn die_by(signal: i32) -> u64 {
    // SAFETY: dying by a signal in this (worker) process is the point. The
    // default action is restored first: std handles SIGSEGV itself.
    unsafe {
        if signal != 0 {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    std::process::exit(0) // for signal 0: exit(0) without a result
}

fn a_dead_worker_fails_only_its_task_and_is_replaced() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let before: std::collections::BTreeSet<i32> = pool.pids().into_iter().collect();
    let cpus_before = pool.cpus().to_vec();
    for (signal, cause) in [
        (libc::SIGKILL, ExitCause::Signal(libc::SIGKILL)),
        (libc::SIGSEGV, ExitCause::Signal(libc::SIGSEGV)),
        (libc::SIGABRT, ExitCause::Signal(libc::SIGABRT)),
        (0, ExitCause::Code(0)),
    ] {
        let others: Vec<_> = (0..50u64)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        match pool.apply(die_by, signal) {
            Err(Error::WorkerDied { cause: got, .. }) => assert_eq!(got, cause),
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.get().unwrap(), (i * i) as u64, "other tasks complete");
        }
    }
    common::eventually("replacements serve", || pool.pids().len() == 2);
    let after: std::collections::BTreeSet<i32> = pool.pids().into_iter().collect();
    assert!(after != before, "dead workers were replaced");
    assert_eq!(pool.cpus(), cpus_before.as_slice());
    for (pid, cpu) in pool.pids().iter().zip(pool.cpus()) {
        assert_eq!(
            corepool::info::affinity_of(*pid).unwrap(),
            vec![cpu.unwrap()],
            "replacement pinned to its slot's CPU"
        );
    }
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
}

fn busy_ms(ms: u64) -> u64 {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

fn waits_longer_than_the_spin_budget_are_woken() {
    // A caller that stops spinning and sleeps must be woken by the driver.
    let pool = pool2();
    for _ in 0..5 {
        assert_eq!(pool.apply(busy_ms, 20).unwrap(), 20);
    }
    let h = pool.apply_async(busy_ms, 20).unwrap();
    assert_eq!(h.get().unwrap(), 20);
}

fn callbacks_run_without_anyone_waiting() {
    let pool = pool2();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..20u64 {
        let tx = tx.clone();
        let cb = Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
        // The handles are dropped at once: only the driver delivers.
        drop(pool.apply_async_with(square, i, cb).unwrap());
    }
    let mut got: Vec<u64> = (0..20)
        .map(|_| rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..20u64).map(square).collect::<Vec<_>>());
}

/// CPU time (user + system, clock ticks) process `pid` has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn an_idle_pool_costs_nothing() {
    let pool = pool2();
    assert_eq!(pool.map(square, 0..10_000u64).unwrap().len(), 10_000);
    let pids = pool.pids();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    // The measurement window itself: idle for one second (not a sync point).
    std::thread::sleep(Duration::from_secs(1));
    for (pid, b) in pids.iter().zip(before) {
        let used = cpu_ticks(*pid) - b;
        // 1% of a core for a second is one 10 ms tick; allow rounding.
        assert!(used <= 2, "worker {pid} used {used} ticks while idle");
    }
}

fn map_callbacks_run_once_with_the_whole_result() {
    let pool = pool2();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    let cb = Callbacks::new()
        .on_success(move |v: &Vec<u64>| tx.send(Ok(v.clone())).unwrap())
        .on_error(move |e| tx2.send(Err(e.clone())).unwrap());
    let h = pool
        .chunked(7)
        .unwrap()
        .map_async_with(square, 0..1000u64, cb)
        .unwrap();
    let expected: Vec<u64> = (0..1000).map(|i| i * i).collect();
    assert_eq!(rx.recv().unwrap().unwrap(), expected);
    assert_eq!(h.get().unwrap(), expected);
    assert!(rx.try_recv().is_err(), "the callback runs once");

    let (tx, rx) = std::sync::mpsc::channel();
    let cb = Callbacks::new().on_error(move |e| tx.send(e.clone()).unwrap());
    let items: Vec<(u64, u64)> = (0..20).map(|i| (i, 0)).collect();
    let h = pool
        .chunked(1)
        .unwrap()
        .starmap_async_with(|a: u64, b: u64| fails_above_5(a + b), items, cb)
        .unwrap();
    assert!(matches!(rx.recv().unwrap(), Error::Panicked { message } if message.contains("n > 5")));
    assert!(h.get().is_err());
}

fn fails_at_700(x: u64) -> u64 {
    assert!(x != 700, "item {x}");
    x
}

fn map_streams_chunks_and_stops_at_a_failure() {
    let pool = pool2();
    // Many more chunks than are kept in flight (4 per worker).
    let expected: Vec<u64> = (0..5000).map(|i| i * i).collect();
    assert_eq!(
        pool.chunked(7).unwrap().map(square, 0..5000u64).unwrap(),
        expected
    );
    assert_eq!(
        pool.chunked(3)
            .unwrap()
            .starmap(|a: u64, b: u64| a * b, (0..5000u64).map(|i| (i, i)))
            .unwrap(),
        expected
    );
    // A failing chunk in the middle ends the map with its error...
    match pool.chunked(10).unwrap().map(fails_at_700, 0..5000u64) {
        Err(Error::Panicked { message }) => assert!(message.contains("item 700"), "{message}"),
        other => panic!("expected the panic, got {other:?}"),
    }
    // ... and the pool goes on.
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
    // Iterators that misreport their length.
    for (real, claimed) in [(100, 1000), (1000, 100), (0, 50), (50, 0)] {
        let liar = common::Liar {
            next: 0,
            real,
            claimed,
        };
        let got = pool.chunked(16).unwrap().map(square, liar).unwrap();
        assert_eq!(
            got,
            (0..real).map(|i| i * i).collect::<Vec<_>>(),
            "{real} vs {claimed}"
        );
    }
}

fn worker_counts_out_of_range_are_config_errors() {
    for n in [0, 4097, usize::MAX] {
        for pinning in [Pinning::PerCpu, Pinning::None] {
            let err = Pool::builder()
                .workers(n)
                .pinning(pinning)
                .build()
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidConfig { what } if what.contains("1 to 4096")),
                "{n} workers: {err}"
            );
        }
    }
}

/// A zero task timeout would fail every task on a killed worker, a zero
/// start timeout every worker's start (with advice about initializers):
/// both refused at `build`, like `max_queued(0)` (user trials).
fn a_zero_task_timeout_is_a_config_error() {
    let err = Pool::builder()
        .workers(1)
        .task_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { what } if what.contains("task_timeout")),
        "{err}"
    );
    let err = Pool::builder()
        .workers(1)
        .start_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { what } if what.contains("start_timeout")),
        "{err}"
    );
}

fn get_timeout_can_be_called_again() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = SharedArray::<u64>::new(1).unwrap();
    let h = pool.apply_async(wait_for_gate, gate.clone()).unwrap();
    // The task cannot finish before the gate opens: a timeout for sure.
    assert_eq!(
        h.get_timeout(Duration::from_millis(1)).unwrap_err(),
        Error::Timeout
    );
    gate.set(0, 1).unwrap();
    // Duration::MAX is "no deadline", never an overflow panic.
    assert_eq!(h.get_timeout(Duration::MAX).unwrap(), 7);
    assert_eq!(
        h.get_timeout(Duration::MAX).unwrap_err(),
        Error::ResultTaken
    );
    assert!(h.wait_timeout(Duration::MAX));
}

fn wait_for_gate(gate: SharedArray<u64>) -> u64 {
    while gate.get(0) == Some(0) {
        std::thread::yield_now();
    }
    7
}

fn endless_timeouts_are_no_timeouts() {
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::MAX)
        .start_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
}

/// A minimal executor: poll, park until woken, repeat; counts the polls
/// that returned `Pending`.
fn block_on_counting<F: std::future::Future>(future: F) -> (F::Output, usize) {
    use std::task::{Context, Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return (out, pending),
            Poll::Pending => {
                pending += 1;
                std::thread::park();
            }
        }
    }
}

fn async_results_are_futures_woken_by_the_pool() {
    let pool = Arc::new(pool2());
    // A task that cannot finish before the first poll: it waits for a file
    // the test creates only after the future has been polled once.
    let flag = std::env::temp_dir().join(format!("corepool-future-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    fn wait_for(path: String) -> u64 {
        while !std::path::Path::new(&path).exists() {
            std::thread::yield_now();
        }
        7
    }
    let slow = pool
        .apply_async(wait_for, flag.to_string_lossy().into_owned())
        .unwrap();
    let mut polled_once = false;
    let future = std::future::poll_fn({
        let mut slow = Some(slow);
        let flag = flag.clone();
        move |cx| {
            let poll = std::pin::Pin::new(slow.as_mut().unwrap()).poll(cx);
            if !polled_once {
                polled_once = true;
                std::fs::write(&flag, b"go").unwrap();
            }
            poll
        }
    });
    use std::future::Future;
    let (value, pending) = block_on_counting(future);
    assert_eq!(value.unwrap(), 7);
    assert!(pending >= 1, "the first poll came before the result");
    std::fs::remove_file(&flag).unwrap();

    // A map handle too, and a future woken by terminate with `Cancelled`.
    let (all, _) = block_on_counting(pool.map_async(square, 0..100u64).unwrap());
    assert_eq!(all.unwrap().len(), 100);
    fn forever(_: u64) -> u64 {
        loop {
            std::thread::yield_now();
        }
    }
    let stuck = pool.apply_async(forever, 0).unwrap();
    let terminator = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            // Before or after the first poll, as it happens: the
            // cancellation must reach the future either way.
            pool.terminate();
        })
    };
    let (cancelled, _) = block_on_counting(stuck);
    terminator.join().unwrap();
    assert_eq!(cancelled.unwrap_err(), Error::Cancelled);
}

fn default_and_chosen_chunk_sizes_agree() {
    let pool = pool2();
    let items = || (0..1000u64).collect::<Vec<_>>();
    let pairs = || (0..1000u64).map(|i| (i, i + 1)).collect::<Vec<_>>();
    let add = |a: u64, b: u64| a + b;
    let by_default = pool.map(square, items()).unwrap();
    for chunksize in [1, 3, 64, 1000] {
        let chosen = pool.chunked(chunksize).unwrap();
        assert_eq!(chosen.chunksize(), chunksize);
        assert_eq!(chosen.map(square, items()).unwrap(), by_default);
        assert_eq!(
            chosen.map_async(square, items()).unwrap().get().unwrap(),
            by_default
        );
        assert_eq!(
            chosen.starmap(add, pairs()).unwrap(),
            pool.starmap(add, pairs()).unwrap()
        );
        assert_eq!(
            chosen.starmap_async(add, pairs()).unwrap().get().unwrap(),
            pool.starmap_async(add, pairs()).unwrap().get().unwrap()
        );
        let lazy: Result<Vec<u64>, _> = chosen.imap(square, items()).collect();
        assert_eq!(lazy.unwrap(), by_default);
        let mut unordered: Vec<u64> = chosen
            .imap_unordered(square, items())
            .collect::<Result<_, _>>()
            .unwrap();
        unordered.sort_unstable();
        assert_eq!(unordered, by_default);
    }
    let lazy: Result<Vec<u64>, _> = pool.imap(square, items()).collect();
    assert_eq!(lazy.unwrap(), by_default);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, items())
        .collect::<Result<_, _>>()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, by_default);
    assert!(matches!(pool.chunked(0), Err(Error::InvalidConfig { .. })));
}

fn lazy_maps_on_a_closed_pool_yield_one_error_and_end() {
    let pool = pool2();
    pool.close();
    let mut ordered = pool.imap(square, 0..10u64);
    assert_eq!(ordered.next(), Some(Err(Error::PoolClosed)));
    assert_eq!(ordered.next(), None);
    assert_eq!(ordered.next(), None, "it stays ended");
    let mut unordered = pool.imap_unordered(square, 0..10u64);
    assert_eq!(unordered.next(), Some(Err(Error::PoolClosed)));
    assert_eq!(unordered.next(), None);
    assert_eq!(unordered.next(), None, "it stays ended");
    let chosen = pool.chunked(4).unwrap();
    assert_eq!(
        chosen.imap(square, 0u64..).collect::<Vec<_>>(),
        [Err(Error::PoolClosed)]
    );
    assert_eq!(
        chosen.imap_unordered(square, 0..10u64).collect::<Vec<_>>(),
        [Err(Error::PoolClosed)]
    );
    // No items change nothing: a closed pool refuses the call, as Python's
    // does (a user trial's `map` of nothing returned `Ok([])`).
    assert_eq!(pool.map(square, 0..0u64), Err(Error::PoolClosed));
    assert!(matches!(
        pool.map_async(square, 0..0u64),
        Err(Error::PoolClosed)
    ));
    assert_eq!(
        pool.starmap(|a: u64, b: u64| a + b, Vec::<(u64, u64)>::new()),
        Err(Error::PoolClosed)
    );
    assert_eq!(
        pool.imap(square, 0..0u64).collect::<Vec<_>>(),
        [Err(Error::PoolClosed)]
    );
    assert_eq!(
        pool.imap_unordered(square, 0..0u64).collect::<Vec<_>>(),
        [Err(Error::PoolClosed)]
    );
    pool.join().unwrap();
}

// ---- the lazy maps: pulled a window ahead, results handed back when in ----

/// Far longer than any step here takes; only a hang reaches it.
const HUNG: Duration = Duration::from_secs(60);

/// `imap_unordered` pulls its source a window ahead of the consumer, as
/// `imap` does (it used to collect the whole source first: an endless one
/// panicked with "capacity overflow"), and still answers every item once.
fn imap_unordered_pulls_its_source_lazily() {
    let pool = pool2();
    // The most a lazy map keeps in flight (64 chunks per worker).
    let window = pool.workers() as u64 * 64;
    let pulled = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let counted = pulled.clone();
    let endless = (0u64..).inspect(move |_| counted.set(counted.get() + 1));
    let three: Vec<u64> = pool
        .imap_unordered(square, endless)
        .take(3)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(three.len(), 3);
    assert!(
        pulled.get() <= 3 + window,
        "{} items pulled for 3 results",
        pulled.get()
    );
    let chunks = pool.chunked(4).unwrap();
    let three = chunks.imap_unordered(square, 0u64..).take(3).count();
    assert_eq!(three, 3);
    // Every item once, in any order, chunked or not.
    for chunksize in [1, 7] {
        let mut all: Vec<u64> = pool
            .chunked(chunksize)
            .unwrap()
            .imap_unordered(square, 0..1000u64)
            .collect::<Result<_, _>>()
            .unwrap();
        all.sort_unstable();
        assert_eq!(all, (0..1000u64).map(square).collect::<Vec<_>>());
    }
    // Dropped early with work in flight: the pool goes on.
    let mut early = pool.imap_unordered(square, 0..10_000_000u64);
    assert!(early.next().unwrap().is_ok());
    drop(early);
    assert_eq!(pool.apply(square, 3), Ok(9));
    // Closed midway: the results in flight come, then the refusal, last
    // (for `imap`, in turn).
    let mut ordered = pool.imap(square, 0u64..);
    assert_eq!(ordered.next(), Some(Ok(0)));
    let mut unordered = pool.imap_unordered(square, 0u64..);
    assert!(unordered.next().unwrap().is_ok());
    pool.close();
    let rest: Vec<_> = ordered.collect();
    let (last, before) = rest.split_last().unwrap();
    assert_eq!(last, &Err(Error::PoolClosed), "{rest:?}");
    let squares: Vec<_> = (1..=before.len() as u64).map(|x| Ok(square(x))).collect();
    assert_eq!(before, squares, "the results in flight, in order");
    let rest: Vec<_> = unordered.collect();
    assert_eq!(rest.last(), Some(&Err(Error::PoolClosed)), "{rest:?}");
    assert!(rest[..rest.len() - 1].iter().all(Result::is_ok), "{rest:?}");
    assert!(rest.len() as u64 <= window + 1, "{} items", rest.len());
    pool.join().unwrap();
}

/// Counts the tasks that ran, for a source that waits on them.
fn counted_run((x, ran): (u64, corepool::AtomicValue<u64>)) -> u64 {
    ran.fetch_add(1);
    x
}

/// `imap` hands back the result it owes once it is in, before it pulls
/// more: it used to pull its whole window first, waiting on a slow source
/// while a result sat ready. The source here is slow in a way tied to the
/// pool's progress: item `k` comes once `k` tasks have run. With one
/// worker, task `k` runs only after result `k - 1` is in the result ring,
/// so a map that hands back what is in is never more than two items ahead
/// of its consumer; the old one was always its window (4) ahead.
fn imap_hands_back_a_result_that_is_in_before_pulling_more() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let ran = corepool::AtomicValue::new(0u64).unwrap();
    let pulled = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let (counted, source_ran) = (pulled.clone(), ran.clone());
    let slow = (0u64..).map(move |k| {
        let deadline = std::time::Instant::now() + HUNG;
        while source_ran.load() < k {
            assert!(std::time::Instant::now() < deadline, "task {k} never ran");
            std::thread::yield_now();
        }
        counted.set(k + 1);
        (k, source_ran.clone())
    });
    let mut results = pool.imap(counted_run, slow);
    let mut ahead = Vec::new();
    for k in 0..20u64 {
        assert_eq!(results.next(), Some(Ok(k)));
        ahead.push(pulled.get() - (k + 1));
    }
    // Allow for a result that was not in yet when `next` looked (the
    // driver may be between taking it from the ring and handing it over).
    assert!(
        ahead.iter().any(|&a| a <= 2),
        "items pulled ahead of the consumer at each result: {ahead:?}"
    );
}

fn panics_on_three(x: u64) -> u64 {
    assert_ne!(x, 3, "three");
    x
}

/// A failing task is one item of `imap`, in its place, and the results after
/// it still come (Python's `imap` raises at that item and lets the loop go
/// on; `Cluster::imap` did, `Pool::imap` used to end there, dropping the
/// rest of a loop that records errors: a user trial). Chunked, a failing
/// chunk is one error in place of its items.
fn imap_goes_on_after_a_failing_task() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<corepool::Result<u64>> = pool.imap(panics_on_three, 0..10u64).collect();
    assert_eq!(results.len(), 10, "{results:?}");
    for (i, r) in results.iter().enumerate() {
        match r {
            Err(Error::Panicked { message }) if i == 3 => assert!(message.contains("three")),
            Ok(v) if i != 3 => assert_eq!(*v, i as u64),
            other => panic!("item {i}: {other:?}"),
        }
    }
    let chunked: Vec<corepool::Result<u64>> = pool
        .chunked(2)
        .unwrap()
        .imap(panics_on_three, 0..10u64)
        .collect();
    // Items 2 and 3 share a chunk: one error in their place.
    assert_eq!(chunked.len(), 9, "{chunked:?}");
    assert!(matches!(chunked[2], Err(Error::Panicked { .. })));
    assert_eq!(chunked[3], Ok(4));
    assert_eq!(chunked[8], Ok(9));
    // The pool's own end still ends it: nothing after a refusal.
    pool.close();
    let mut refused = pool.imap(panics_on_three, 0..10u64);
    assert_eq!(refused.next(), Some(Err(Error::PoolClosed)));
    assert_eq!(refused.next(), None);
}

/// Submits `square(3)` with a callback that blocks the thread delivering it
/// (nobody waits on it: the driver) until the returned sender sends, or
/// the watchdog's time passed (then the sender's send fails: the test's
/// waits did not return while the callback ran). Returns once the callback
/// runs.
fn a_callback_stuck_until_released(
    pool: &Pool,
) -> (corepool::AsyncResult<u64>, std::sync::mpsc::Sender<()>) {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let cb = Callbacks::new().on_success(move |_: &u64| {
        started_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(HUNG);
    });
    let slow = pool.apply_async_with(square, 3, cb).unwrap();
    started_rx.recv_timeout(HUNG).unwrap();
    (slow, release_tx)
}

/// A slow callback of one task does not hold back the results of a `map`,
/// `imap` or `imap_unordered` waiting on the same pool: they used to wait
/// for the driver thread, busy running the callback. The callback here is
/// blocked until they returned.
fn a_slow_callback_does_not_hold_back_the_maps() {
    let pool = pool2();
    let (slow, release_tx) = a_callback_stuck_until_released(&pool);
    let squares: Vec<u64> = (0..1000u64).map(square).collect();
    assert_eq!(pool.map(square, 0..1000u64).unwrap(), squares);
    let lazy: Vec<u64> = pool
        .imap(square, 0..1000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lazy, squares);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..1000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, squares);
    release_tx
        .send(())
        .expect("the maps returned while the callback still ran");
    assert_eq!(slow.get(), Ok(9));
}

/// Outlasts a waiting caller's spin (about 50 µs), so that its `get` goes
/// to sleep: how long it takes does not matter, only that it is longer.
fn nap_then_square(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(20));
    x * x
}

/// As `a_slow_callback_does_not_hold_back_the_maps`, for `get` and
/// `wait_timeout` of a task that outlasts their spin: they slept until the
/// driver, stuck in another task's callback, delivered their result.
fn a_slow_callback_does_not_hold_back_a_get() {
    let pool = pool2();
    let (slow, release_tx) = a_callback_stuck_until_released(&pool);
    let h = pool.apply_async(nap_then_square, 7).unwrap();
    assert_eq!(h.get(), Ok(49));
    let h = pool.apply_async(nap_then_square, 8).unwrap();
    assert!(h.wait_timeout(HUNG), "the result came");
    assert_eq!(h.get(), Ok(64));
    assert_eq!(pool.apply(nap_then_square, 9), Ok(81));
    release_tx
        .send(())
        .expect("the gets returned while the callback still ran");
    assert_eq!(slow.get(), Ok(9));
}

/// A runtime on this very thread: what `#[tokio::main(flavor =
/// "current_thread")]` builds.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime starts")
}

/// Where a callback ran: its thread's name, whether it was the thread that
/// awaited or got the results, whether inside an async runtime.
type RanOn = (Option<String>, bool, bool);

fn ran_on(waiter: std::thread::ThreadId) -> RanOn {
    let here = std::thread::current();
    (
        here.name().map(str::to_owned),
        here.id() == waiter,
        tokio::runtime::Handle::try_current().is_ok(),
    )
}

/// trial25 F1: awaiting results (each poll helps collect) ran other tasks'
/// callbacks on the runtime's thread, inside the runtime (12% of them,
/// where a `blocking_send` panics). Neither an awaiting nor a `get`ting
/// thread runs a callback now: the pool's callback thread runs them all.
fn callbacks_never_run_on_an_awaiting_or_getting_thread() {
    let pool = pool2();
    let waiter = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::channel::<RanOn>();
    let submit = |i: u64| {
        let (ok, err) = (tx.clone(), tx.clone());
        let cb = Callbacks::new()
            .on_success(move |_: &String| ok.send(ran_on(waiter)).unwrap())
            .on_error(move |_| err.send(ran_on(waiter)).unwrap());
        // Every tenth fails: error callbacks too.
        pool.apply_async_with(fails_above_5, if i % 10 == 9 { 6 } else { 1 }, cb)
            .unwrap()
    };
    let awaited: Vec<_> = (0..1000).map(submit).collect();
    let failed = current_thread_runtime().block_on(async {
        let mut failed = 0;
        for h in awaited {
            failed += usize::from(h.await.is_err());
        }
        failed
    });
    assert_eq!(failed, 100);
    let got: Vec<_> = (0..1000).map(submit).collect();
    let failed = got
        .into_iter()
        .filter(|h| h.get_timeout(HUNG).is_err())
        .count();
    assert_eq!(failed, 100);
    drop(tx);
    // A task's callback returns before its result is visible: all ran.
    let seen: Vec<RanOn> = rx.try_iter().collect();
    assert_eq!(seen.len(), 2000);
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(name, on_waiter, in_runtime)| {
            name.as_deref() != Some("corepool-callbacks") || *on_waiter || *in_runtime
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "callbacks ran elsewhere: {:?}",
        &wrong[..wrong.len().min(5)]
    );
}

/// trial25 F2: while a callback blocks, a new task is awaited (and got, and
/// mapped) at once: only the driver woke an awaiting task, and it was the
/// thread stuck in the callback. A later task's callback does wait behind
/// the blocked one (they run in order, one at a time), and so does that
/// task's own result, which is visible once its callback returned.
fn a_blocked_callback_holds_back_later_callbacks_only() {
    let pool = pool2();
    let (slow, release_tx) = a_callback_stuck_until_released(&pool);
    let (later_tx, later_rx) = std::sync::mpsc::channel();
    let cb = Callbacks::new().on_success(move |v: &u64| later_tx.send(*v).unwrap());
    let later = pool.apply_async_with(square, 5, cb).unwrap();
    let runtime = current_thread_runtime();
    let awaited = runtime.block_on(async {
        let one = pool.apply_async(nap_then_square, 7).unwrap().await;
        let mut quick = Vec::new();
        for i in 0..100u64 {
            quick.push(pool.apply_async(square, i).unwrap().await);
        }
        let many = pool.map_async(square, 0..1000u64).unwrap().await;
        (one, quick, many.map(|m| m.len()))
    });
    assert_eq!(awaited.0, Ok(49));
    assert!(awaited
        .1
        .iter()
        .enumerate()
        .all(|(i, r)| *r == Ok(square(i as u64))));
    assert_eq!(awaited.2, Ok(1000));
    assert_eq!(pool.apply_async(nap_then_square, 8).unwrap().get(), Ok(64));
    assert_eq!(pool.apply(square, 9), Ok(81));
    // Queued behind the blocked callback, which has not returned.
    assert!(
        later_rx.try_recv().is_err(),
        "a later callback overtook a blocked one"
    );
    assert!(
        !later.ready(),
        "a result was visible before its callback ran"
    );
    release_tx
        .send(())
        .expect("the awaits and gets returned while the callback still ran");
    assert_eq!(slow.get(), Ok(9));
    assert_eq!(later_rx.recv_timeout(HUNG), Ok(25));
    assert_eq!(later.get(), Ok(25));
}

/// trial25 F9: `terminate` ran the cancelled tasks' error callbacks on its
/// caller's thread: one sending into a bounded channel that the caller
/// drains after `terminate` deadlocked it. It returns now, and every error
/// callback runs after, on the callback thread.
fn terminate_returns_while_error_callbacks_wait_for_its_caller() {
    let pool = Arc::new(pool2());
    let caller = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Error, RanOn)>(1);
    let handles: Vec<_> = (0..6u64)
        .map(|i| {
            let tx = tx.clone();
            let cb =
                Callbacks::new().on_error(move |e| tx.send((e.clone(), ran_on(caller))).unwrap());
            pool.apply_async_with(spin_forever, i, cb).unwrap()
        })
        .collect();
    drop(tx);
    // Terminated from another thread, so that a hang is the watchdog's to
    // report here; the error callbacks block on `rx`, drained below only.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let terminator = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.terminate();
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(HUNG)
        .expect("terminate returned while the error callbacks waited");
    terminator.join().unwrap();
    for _ in 0..6 {
        let (error, (name, _, in_runtime)) = rx.recv_timeout(HUNG).expect("every on_error runs");
        assert_eq!(error, Error::Cancelled);
        assert_eq!(name.as_deref(), Some("corepool-callbacks"));
        assert!(!in_runtime);
    }
    for h in handles {
        assert_eq!(h.get(), Err(Error::Cancelled));
    }
    assert_eq!(pool.join(), Ok(()));
}

/// `join` returns once every callback has returned, and the drop once every
/// callback (the cancelled tasks' `on_error` included) has: they run on the
/// callback thread, which neither waits for.
fn join_and_drop_wait_for_every_callback() {
    let pool = pool2();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..200u64 {
        let ran = ran.clone();
        let cb = Callbacks::new().on_success(move |_: &u64| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        drop(pool.apply_async_with(square, i, cb).unwrap());
    }
    pool.close();
    pool.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 200);

    let pool = pool2();
    let (ok, err) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for i in 0..200u64 {
        let (ok, err) = (ok.clone(), err.clone());
        let cb = Callbacks::new()
            .on_success(move |_: &u64| {
                ok.fetch_add(1, Ordering::SeqCst);
            })
            .on_error(move |_| {
                err.fetch_add(1, Ordering::SeqCst);
            });
        if i % 2 == 0 {
            drop(pool.apply_async_with(spin_forever, i, cb).unwrap());
        } else {
            drop(pool.apply_async_with(square, i, cb).unwrap());
        }
    }
    drop(pool);
    assert_eq!(ok.load(Ordering::SeqCst) + err.load(Ordering::SeqCst), 200);
    assert!(
        err.load(Ordering::SeqCst) >= 100,
        "the endless tasks were cancelled"
    );
}

/// Under `max_queued`, room is freed when an answer is collected, not when
/// its callback has returned (trial 25, F6): submissions go on while every
/// callback is blocked, and the producer/consumer pattern of callbacks
/// sending into a bounded channel the submitting loop drains between
/// submissions completes (a hang is the watchdog's).
fn max_queued_frees_room_on_collection_not_on_callbacks() {
    let pool = Pool::builder()
        .workers(2)
        .max_queued(2)
        .build()
        .expect("pool starts");
    let (slow, release_tx) = a_callback_stuck_until_released(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..20u64)
        .map(|i| {
            let ran = ran.clone();
            let cb = Callbacks::new().on_success(move |_: &u64| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            pool.apply_async_with(square, i, cb).unwrap()
        })
        .collect();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "the callbacks wait behind the blocked one"
    );
    release_tx
        .send(())
        .expect("the submissions returned while the callback still ran");
    assert_eq!(slow.get(), Ok(9));
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get(), Ok((i * i) as u64));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 20);

    // The trial's `maxqchan`: a channel of 2, drained between submissions.
    let pool = Pool::builder()
        .workers(2)
        .max_queued(4)
        .build()
        .expect("pool starts");
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(2);
    let mut got = Vec::new();
    for i in 0..200u64 {
        let tx = tx.clone();
        let cb = Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
        drop(pool.apply_async_with(square, i, cb).unwrap());
        got.extend(rx.try_iter());
    }
    while got.len() < 200 {
        got.push(rx.recv_timeout(HUNG).expect("every callback sends"));
    }
    pool.close();
    pool.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..200u64).map(square).collect::<Vec<_>>());
}

/// `join_timeout` says whether the pool joined; when it did not, the pool
/// is as it was (closed, its tasks and callbacks going on), so the caller
/// can wait again or `terminate` it: the graceful shutdown of a service.
fn join_timeout_returns_whether_the_pool_joined() {
    let pool = pool2();
    assert_eq!(
        pool.join_timeout(Duration::ZERO),
        Err(Error::JoinWhileOpen),
        "as join"
    );
    let stuck = pool.apply_async(spin_forever, 0).unwrap();
    let quick = pool.apply_async(square, 5).unwrap();
    pool.close();
    assert_eq!(pool.join_timeout(Duration::from_millis(10)), Ok(false));
    assert_eq!(quick.get(), Ok(25), "the pool goes on");
    assert!(!stuck.ready());
    assert_eq!(pool.pids().len(), 2, "no worker was stopped");
    pool.terminate();
    assert_eq!(pool.join_timeout(HUNG), Ok(true));
    assert_eq!(stuck.get(), Err(Error::Cancelled));
    assert!(pool.pids().is_empty());
    assert_eq!(
        pool.join_timeout(Duration::ZERO),
        Ok(true),
        "joined stays joined"
    );

    // A callback still running: not joined, until it returns.
    let pool = pool2();
    let (slow, release_tx) = a_callback_stuck_until_released(&pool);
    pool.close();
    assert_eq!(pool.join_timeout(Duration::from_millis(10)), Ok(false));
    release_tx.send(()).expect("the callback still ran");
    assert_eq!(pool.join_timeout(Duration::MAX), Ok(true));
    assert_eq!(slow.get(), Ok(9));
}

fn main() {
    common::run(common::tests![
        async_results_are_futures_woken_by_the_pool,
        apply_round_trips,
        apply_async_handles,
        panics_reach_the_error_callback_and_the_worker_survives,
        map_family,
        plain_data_of_every_width_maps_in_one_pass,
        default_and_chosen_chunk_sizes_agree,
        lazy_maps_on_a_closed_pool_yield_one_error_and_end,
        close_join_and_closed_errors,
        terminate_cancels_pending_work,
        drop_with_work_pending_never_hangs,
        workers_are_pinned_to_their_cpus,
        oversized_arguments_and_results_spill,
        initializer_runs_in_every_worker,
        initializer_panic_fails_build,
        initializer_exit_fails_build_saying_so,
        workers_are_named_after_the_program,
        initializer_with_hands_every_worker_its_argument,
        max_tasks_per_child_replaces_workers_without_losing_work,
        long_tasks_do_not_leave_a_core_idle,
        pools_from_many_threads,
        many_pools_leave_no_zombies,
        a_dead_worker_fails_only_its_task_and_is_replaced,
        waits_longer_than_the_spin_budget_are_woken,
        callbacks_run_without_anyone_waiting,
        an_idle_pool_costs_nothing,
        worker_counts_out_of_range_are_config_errors,
        a_zero_task_timeout_is_a_config_error,
        map_streams_chunks_and_stops_at_a_failure,
        map_callbacks_run_once_with_the_whole_result,
        get_timeout_can_be_called_again,
        endless_timeouts_are_no_timeouts,
        imap_unordered_pulls_its_source_lazily,
        imap_hands_back_a_result_that_is_in_before_pulling_more,
        imap_goes_on_after_a_failing_task,
        a_slow_callback_does_not_hold_back_the_maps,
        a_slow_callback_does_not_hold_back_a_get,
        callbacks_never_run_on_an_awaiting_or_getting_thread,
        a_blocked_callback_holds_back_later_callbacks_only,
        terminate_returns_while_error_callbacks_wait_for_its_caller,
        join_and_drop_wait_for_every_callback,
        max_queued_frees_room_on_collection_not_on_callbacks,
        join_timeout_returns_whether_the_pool_joined,
    ]);
}
