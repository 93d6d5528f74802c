//! Faults of the pool's parent side: callbacks and decoders that panic, wait
//! or drop the pool; replacements stuck starting; a `fork()`ed copy of a pool;
//! chunk sizes out of range; a producer faster than the workers. Each test
//! fails on the code before its fix (a hang is caught by the watchdog or a
//! generous `recv_timeout`). Runs with its own `main`: workers re-execute
//! this binary.

mod common;

use corepool::{AtomicValue, Callbacks, Error, Pool, Wire};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Far longer than any of these steps takes; only a hang reaches it.
const HUNG: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

/// Waits (in the worker) until `gate` is opened, then returns 7.
fn wait_for_gate(gate: AtomicValue<u64>) -> u64 {
    while gate.load() == 0 {
        std::thread::yield_now();
    }
    7
}

/// A result type whose decoder panics on 13 (a user's buggy `Wire`).
#[derive(Debug, PartialEq)]
struct Fragile(u64);

impl Wire for Fragile {
    fn encode(&self, out: &mut corepool::Encoder) {
        self.0.encode(out);
    }

    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        let v = u64::decode(input)?;
        assert!(v != 13, "the decoder of Fragile refuses 13");
        Ok(Fragile(v))
    }
}

fn fragile(x: u64) -> Fragile {
    Fragile(x)
}

// ---- 1: a panicking callback or decoder affects only its own task ----------

fn a_panicking_callback_affects_only_its_task() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let ok_panics = Callbacks::new().on_success(|_: &u64| panic!("on_success fails on purpose"));
    let err_panics = Callbacks::new().on_error(|_: &Error| panic!("on_error fails on purpose"));
    let a = pool.apply_async_with(square, 6, ok_panics).unwrap();
    let b = pool
        .apply_async_with(|x: u64| -> u64 { panic!("task {x} fails") }, 1, err_panics)
        .unwrap();
    let others: Vec<_> = (0..100u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    // Delivered by the driver: nobody helps.
    common::eventually("both outcomes stored", || a.ready() && b.ready());
    assert_eq!(a.get(), Ok(36), "the task's own outcome is stored");
    assert!(matches!(b.get(), Err(Error::Panicked { .. })));
    for (i, h) in others.into_iter().enumerate() {
        assert_eq!(h.get_timeout(HUNG), Ok((i * i) as u64));
    }
    // The driver lives on: a submission nobody helps with still completes.
    let (tx, rx) = mpsc::channel();
    let cb = Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
    pool.apply_async_with(square, 9, cb).unwrap();
    assert_eq!(rx.recv_timeout(HUNG), Ok(81));
    // Dropping the pool returns (the watchdog catches it otherwise).
}

fn a_panicking_callback_on_a_waiting_caller_affects_only_its_task() {
    let pool = Pool::builder().workers(1).build().unwrap();
    for i in 0..20u64 {
        let cb = Callbacks::new().on_success(|_: &u64| panic!("on_success fails on purpose"));
        // `get` helps deliver: the callback may run on this very thread.
        let h = pool.apply_async_with(square, i, cb).unwrap();
        assert_eq!(h.get(), Ok(i * i));
    }
    assert_eq!(pool.map(square, 0..10u64).unwrap().len(), 10);
}

fn a_panicking_decoder_fails_only_its_task() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let bad = pool.apply_async(fragile, 13).unwrap();
    let good = pool.apply_async(fragile, 12).unwrap();
    common::eventually("both outcomes stored", || bad.ready() && good.ready());
    assert!(
        matches!(bad.get(), Err(Error::Decode { .. })),
        "the decoder's panic is the task's decode error"
    );
    assert_eq!(good.get(), Ok(Fragile(12)));
    assert!(matches!(
        pool.chunked(3).unwrap().map(fragile, 10..20u64),
        Err(Error::Decode { .. })
    ));
    let unordered: Vec<_> = pool
        .chunked(2)
        .unwrap()
        .imap_unordered(fragile, 10..20u64)
        .collect();
    assert_eq!(unordered.len(), 9, "the chunk of 12 and 13 is one error");
    assert_eq!(
        unordered
            .iter()
            .filter(|r| matches!(r, Err(Error::Decode { .. })))
            .count(),
        1
    );
    assert_eq!(pool.apply(square, 5), Ok(25));
}

// ---- 13: waiting on the pool inside a callback fails at once ---------------

/// Every waiting call a callback could make on `pool`, with what it returned.
fn wait_in_callback(
    pool: &Pool,
    pending: corepool::AsyncResult<u64>,
    gate: &AtomicValue<u64>,
) -> Vec<(&'static str, bool)> {
    fn is_wait_error<T>(r: &Result<T, Error>) -> bool {
        matches!(r, Err(Error::WaitInCallback))
    }
    let mut seen = vec![
        ("apply", is_wait_error(&pool.apply(square, 2))),
        ("map", is_wait_error(&pool.map(square, 0..4u64))),
        (
            "starmap",
            is_wait_error(&pool.starmap(|a: u64, b: u64| a + b, vec![(1, 2)])),
        ),
        (
            "imap",
            matches!(
                pool.imap(square, 0..4u64).next(),
                Some(Err(Error::WaitInCallback))
            ),
        ),
    ];
    seen.push((
        "imap_unordered",
        matches!(
            pool.imap_unordered(square, 0..4u64).next(),
            Some(Err(Error::WaitInCallback))
        ),
    ));
    // A task that cannot have answered yet (its gate is shut): a ready
    // result's `get` waits for nothing and returns it (a task that had
    // already run made this flaky, 3 runs in 150).
    let submitted = pool.apply_async(wait_for_gate, gate.clone());
    seen.push(("apply_async (no wait)", submitted.is_ok()));
    if let Ok(h) = submitted {
        seen.push(("apply_async().get", is_wait_error(&h.get())));
    }
    // Polled as a future (a `block_on` in the callback) it is refused too:
    // its result might be one only this thread would deliver.
    let mut pending = pending;
    struct Nobody;
    impl std::task::Wake for Nobody {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Nobody));
    let mut cx = std::task::Context::from_waker(&waker);
    let polled = std::future::Future::poll(std::pin::Pin::new(&mut pending), &mut cx);
    seen.push((
        "poll of another handle",
        matches!(polled, std::task::Poll::Ready(Err(Error::WaitInCallback))),
    ));
    seen.push(("get on another handle", is_wait_error(&pending.get())));
    seen
}

fn check_waits_fail(seen: Vec<(&'static str, bool)>) {
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| *what)
        .collect();
    assert!(
        wrong.is_empty(),
        "calls that did not fail at once: {wrong:?}"
    );
}

fn waiting_inside_a_callback_fails_at_once() {
    let gate = AtomicValue::<u64>::new(0).unwrap();
    for caller_helps in [false, true] {
        let pool = Arc::new(Pool::builder().workers(2).build().unwrap());
        // A task that stays pending while the callback runs.
        let pending = pool.apply_async(wait_for_gate, gate.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        let inner = pool.clone();
        let callback_gate = gate.clone();
        let cb = Callbacks::new().on_success(move |_: &u64| {
            tx.send(wait_in_callback(&inner, pending, &callback_gate))
                .unwrap();
        });
        let h = pool.apply_async_with(square, 4, cb).unwrap();
        if caller_helps {
            // The callback may run here, inside `get`, on this thread.
            assert_eq!(h.get(), Ok(16));
        }
        check_waits_fail(rx.recv_timeout(HUNG).expect("the callback hung"));
        gate.store(1);
        // `close(); join()` from a callback fails too, and `close` works.
        let (tx, rx) = mpsc::channel();
        let inner = pool.clone();
        let cb = Callbacks::new().on_success(move |_: &u64| {
            inner.close();
            tx.send((inner.join(), inner.join_timeout(Duration::ZERO)))
                .unwrap();
        });
        pool.apply_async_with(square, 5, cb).unwrap();
        assert_eq!(
            rx.recv_timeout(HUNG),
            Ok((Err(Error::WaitInCallback), Err(Error::WaitInCallback)))
        );
        assert_eq!(pool.join(), Ok(()), "outside the callback, join works");
        gate.store(0);
    }
}

/// A `submit_raw` `done` function runs on the collecting thread (not the
/// callback thread), as its rustdoc says, and a wait on the pool there
/// fails at once, as in a callback.
fn waiting_inside_a_raw_done_fails_at_once() {
    let pool = Arc::new(Pool::builder().workers(1).build().unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = pool.clone();
    let mut arg = corepool::Encoder::new();
    4u64.encode(&mut arg);
    pool.submit_raw(
        corepool::RawTask::one(square),
        arg.finish().unwrap(),
        move |r| {
            let on = std::thread::current().name().map(str::to_owned);
            tx.send((r, inner.apply(square, 2), on)).unwrap();
        },
    )
    .unwrap();
    let (r, waited, on) = rx.recv_timeout(HUNG).expect("done ran");
    assert_eq!(u64::decode(&mut r.unwrap().as_slice()), Ok(16));
    assert_eq!(waited, Err(Error::WaitInCallback));
    assert_ne!(on.as_deref(), Some("corepool-callbacks"));
    assert_eq!(pool.apply(square, 2), Ok(4), "outside `done`, waits work");
}

// ---- 14: dropping the last pool inside a callback returns ------------------

fn dropping_the_last_pool_inside_a_callback_returns() {
    for caller_helps in [false, true] {
        let gate = AtomicValue::<u64>::new(0).unwrap();
        let pool = Arc::new(Pool::builder().workers(2).build().unwrap());
        let (tx, rx) = mpsc::channel();
        let last = pool.clone();
        let cb = Callbacks::new().on_success(move |v: &u64| {
            drop(last); // the last reference: `Pool::drop` runs here
            tx.send(*v).unwrap();
        });
        let h = pool
            .apply_async_with(wait_for_gate, gate.clone(), cb)
            .unwrap();
        drop(pool);
        gate.store(1);
        if caller_helps {
            assert_eq!(h.get(), Ok(7));
        }
        assert_eq!(
            rx.recv_timeout(HUNG),
            Ok(7),
            "the drop in the callback returned"
        );
        // The harness checks that the workers are reaped.
    }
}

// ---- 15: a fork()ed copy of a pool leaves the parent's workers alone -------

/// In the forked child: every call fails with `ForeignPool`, and dropping the
/// copy returns without touching the parent's workers. The exit code names
/// the first check that failed.
fn play_forked_child(pool: Pool, parents_task: corepool::AsyncResult<u64>) -> i32 {
    let foreign = |r: Result<(), Error>| matches!(r, Err(Error::ForeignPool { .. }));
    if !foreign(pool.apply(square, 3).map(drop)) {
        return 10;
    }
    if !foreign(pool.map(square, 0..100u64).map(drop)) {
        return 11;
    }
    if !foreign(pool.apply_async(square, 3).map(drop)) {
        return 12;
    }
    if !foreign(parents_task.get().map(drop)) {
        return 13;
    }
    if !foreign(pool.join()) {
        return 14;
    }
    drop(pool);
    0
}

fn a_forked_copy_of_a_pool_leaves_the_parents_workers_alone() {
    let gate = AtomicValue::<u64>::new(0).unwrap();
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.pids();
    let in_flight = pool.apply_async(wait_for_gate, gate.clone()).unwrap();
    let copy_of_task = pool.apply_async(wait_for_gate, gate.clone()).unwrap();
    // SAFETY: the child runs only this thread's code and leaves with `_exit`.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // A panic must not unwind out of the child: the harness would catch
        // it and go on running the rest of the suite in this forked copy.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            play_forked_child(pool, copy_of_task)
        }))
        .unwrap_or(99);
        // SAFETY: ends the child at once, without the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let exited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::eventually("the forked child exits", || {
            // SAFETY: waits for our own child, without blocking.
            unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) == child }
        })
    }));
    if exited.is_err() {
        // SAFETY: our own child, hung: kill and reap it before failing.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, &mut status, 0);
        }
        panic!("the forked child hung");
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed: status {status:#x}"
    );
    gate.store(1);
    assert_eq!(
        in_flight.get_timeout(HUNG),
        Ok(7),
        "the parent's task survived"
    );
    assert_eq!(copy_of_task.get_timeout(HUNG), Ok(7));
    assert_eq!(pool.pids(), pids, "the parent's workers were left alone");
    assert_eq!(pool.stats().respawns, 0);
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
}

// ---- 7: tasks are not stranded behind a replacement stuck starting ---------

/// Initializer: the first two workers start; every later one hangs.
fn hang_after_two_starts(starts: AtomicValue<u64>) {
    if starts.fetch_add(1) >= 2 {
        loop {
            std::thread::park();
        }
    }
}

/// A pool of two whose first worker was killed and whose replacement hangs
/// in its initializer (the parent has seen it running).
fn pool_with_a_stuck_replacement(start_timeout: Duration) -> (Pool, AtomicValue<u64>) {
    let starts = AtomicValue::<u64>::new(0).unwrap();
    let pool = Pool::builder()
        .workers(2)
        .initializer_with(hang_after_two_starts, starts.clone())
        .start_timeout(start_timeout)
        .build()
        .unwrap();
    let victim = pool.pids()[0];
    // SAFETY: sends a signal to our own worker.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    common::eventually("the replacement runs its initializer", || {
        starts.load() >= 3 && pool.pids().len() == 2 && !pool.pids().contains(&victim)
    });
    (pool, starts)
}

fn tasks_are_not_stranded_behind_a_starting_replacement() {
    let (pool, _starts) = pool_with_a_stuck_replacement(Duration::from_secs(30));
    let handles: Vec<_> = (0..8u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get_timeout(HUNG), Ok((i * i) as u64), "task {i} stranded");
    }
}

fn a_start_that_overruns_start_timeout_is_retried() {
    let (pool, starts) = pool_with_a_stuck_replacement(Duration::from_secs(5));
    // Killed at its start timeout and tried again.
    common::eventually("the stuck start is retried", || starts.load() >= 4);
    assert_eq!(pool.apply(square, 3), Ok(9), "the other worker serves");
}

// ---- one chunk-size rule for every method ----------------------------------

fn chunk_sizes_out_of_range_fail_alike_everywhere() {
    let pool = Pool::builder().workers(1).build().unwrap();
    // Every method takes its size from `chunked`, which checks it before
    // anything is allocated or any item taken (an endless input included).
    for chunksize in [0, usize::MAX, 1 << 40] {
        assert!(
            matches!(pool.chunked(chunksize), Err(Error::InvalidConfig { .. })),
            "chunked({chunksize})"
        );
    }
    // The largest accepted size works.
    assert_eq!(
        pool.chunked(1000)
            .unwrap()
            .imap(square, 0u64..)
            .take(3)
            .collect::<Result<Vec<_>, _>>(),
        Ok(vec![0, 1, 4])
    );
}

// ---- max_queued: backpressure on submission --------------------------------

/// Returns how many submissions the parent had counted when this task ended;
/// the first task gives the submitter a moment to run ahead.
fn report_submitted((submitted, first): (AtomicValue<u64>, bool)) -> u64 {
    if first {
        let until = std::time::Instant::now() + Duration::from_millis(200);
        while std::time::Instant::now() < until && submitted.load() < 100 {
            std::thread::yield_now();
        }
    }
    submitted.load()
}

fn max_queued_bounds_the_tasks_queued_in_the_parent() {
    const BOUND: u64 = 4;
    let pool = Pool::builder()
        .workers(1)
        .max_queued(BOUND as usize)
        .build()
        .unwrap();
    let submitted = AtomicValue::<u64>::new(0).unwrap();
    let mut handles = Vec::new();
    for i in 0..200u64 {
        handles.push(
            pool.apply_async(report_submitted, (submitted.clone(), i == 0))
                .unwrap(),
        );
        submitted.store(i + 1);
    }
    for (i, h) in handles.into_iter().enumerate() {
        // While task i ran, tasks i.. were all queued: at most BOUND of them.
        let seen = h.get().unwrap();
        assert!(seen <= i as u64 + BOUND, "task {i} saw {seen} submitted");
    }
    assert!(matches!(
        Pool::builder().max_queued(0).build(),
        Err(Error::InvalidConfig { .. })
    ));
}

fn a_submitter_blocked_by_max_queued_wakes_on_terminate() {
    let gate = AtomicValue::<u64>::new(0).unwrap();
    let pool = Arc::new(Pool::builder().workers(1).max_queued(2).build().unwrap());
    let held: Vec<_> = (0..2)
        .map(|_| pool.apply_async(wait_for_gate, gate.clone()).unwrap())
        .collect();
    let submitter = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.apply_async(square, 1).map(drop))
    };
    pool.terminate();
    // Blocked or not when `terminate` came, it ends with the pool closed.
    assert_eq!(submitter.join().unwrap(), Err(Error::PoolClosed));
    for h in held {
        assert_eq!(h.get(), Err(Error::Cancelled));
    }
}

/// The state of a thread of this process named `name` (`R`, `S`, ...), from
/// /proc; `None` while there is none.
fn thread_state(name: &str) -> Option<char> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // After the parenthesised name: " S ...".
            return stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
        }
    }
    None
}

/// A submitter asleep waiting for room is woken by `close` alone (no task
/// answered, no delivery): it used to wait on the pool's lifecycle condvar,
/// which `close` signals; it now sleeps as a helping `get` does, and
/// `close` nudges it.
fn a_submitter_blocked_by_max_queued_wakes_on_close() {
    let gate = AtomicValue::<u64>::new(0).unwrap();
    let pool = Arc::new(Pool::builder().workers(1).max_queued(2).build().unwrap());
    let held: Vec<_> = (0..2)
        .map(|_| pool.apply_async(wait_for_gate, gate.clone()).unwrap())
        .collect();
    let submitter = {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("blocked-submit".into())
            .spawn(move || pool.apply_async(square, 1).map(drop))
            .unwrap()
    };
    // Asleep, most likely waiting for room (a sleep elsewhere only makes
    // this test weaker, not wrong).
    common::eventually("the submitter sleeps", || {
        submitter.is_finished() || thread_state("blocked-submit") == Some('S')
    });
    pool.close();
    assert_eq!(submitter.join().unwrap(), Err(Error::PoolClosed));
    gate.store(1);
    for h in held {
        assert_eq!(h.get_timeout(HUNG), Ok(7));
    }
    pool.join().unwrap();
}

/// Whether `HeldUp`'s decoder was entered, and whether it was released.
static HELD_UP: (std::sync::Mutex<(bool, bool)>, std::sync::Condvar) = (
    std::sync::Mutex::new((false, false)),
    std::sync::Condvar::new(),
);

/// A result whose decoder, for 1000, blocks the thread delivering it until
/// the test releases it (or `HUNG` passed: then it is `HeldUp(0)`).
#[derive(Debug, PartialEq)]
struct HeldUp(u64);

impl Wire for HeldUp {
    fn encode(&self, out: &mut corepool::Encoder) {
        self.0.encode(out);
    }

    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        let v = u64::decode(input)?;
        if v != 1000 {
            return Ok(HeldUp(v));
        }
        let (lock, cond) = &HELD_UP;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cond.notify_all();
        let (state, _) = cond.wait_timeout_while(state, HUNG, |s| !s.1).unwrap();
        Ok(HeldUp(if state.1 { v } else { 0 }))
    }
}

fn held_up(x: u64) -> HeldUp {
    HeldUp(x)
}

/// A submitter blocked by `max_queued` collects the answers itself while
/// the driver is held up delivering another task (here a decoder that
/// waits for this very submitter to go on): it used to wait for the
/// driver's next pass, so this deadlocked until the decoder gave up.
fn a_submitter_blocked_by_max_queued_collects_while_the_driver_is_held_up() {
    let pool = Pool::builder().workers(2).max_queued(2).build().unwrap();
    // Nobody waits on it: the driver collects it and runs its decoder.
    let stuck = pool.apply_async(held_up, 1000).unwrap();
    let (lock, cond) = &HELD_UP;
    drop(
        cond.wait_timeout_while(lock.lock().unwrap(), HUNG, |s| !s.0)
            .unwrap(),
    );
    let handles: Vec<_> = (0..50u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    lock.lock().unwrap().1 = true;
    cond.notify_all();
    assert_eq!(
        stuck.get_timeout(HUNG),
        Ok(HeldUp(1000)),
        "the submissions returned while the decoder still waited"
    );
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get_timeout(HUNG), Ok((i * i) as u64));
    }
}

// ---- submissions: nothing stranded, nothing lost ----------------------------

/// Raises `flag` (in the worker) and returns 1.
fn raise(flag: AtomicValue<u64>) -> u64 {
    flag.store(1);
    1
}

/// A callback run by the driver waits for a task submitted while it runs: that
/// task must reach a worker without waiting for the callback (it would wait
/// for ever). A design that leaves submissions for the driver to dispatch
/// (a submission inbox was tried) must hand them off while caller code runs.
fn a_task_submitted_while_a_callback_waits_for_it_is_dispatched() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let flag = AtomicValue::new(0u64).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    let watched = flag.clone();
    let cb = Callbacks::new().on_success(move |_: &u64| {
        started_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + HUNG;
        while watched.load() == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        seen_tx.send(watched.load()).unwrap();
    });
    // Nobody waits on it: the driver delivers it, and its callback runs there.
    let first = pool.apply_async_with(square, 3, cb).unwrap();
    started_rx.recv_timeout(HUNG).unwrap();
    let second = pool.apply_async(raise, flag).unwrap();
    assert_eq!(
        seen_rx.recv_timeout(HUNG).unwrap(),
        1,
        "the task waited for the callback"
    );
    assert_eq!(first.get(), Ok(9));
    assert_eq!(second.get(), Ok(1));
}

/// Squares `x`, except for the doomed values, whose worker exits.
fn square_or_die(x: u64) -> u64 {
    if x % 1000 == 999 {
        std::process::exit(1);
    }
    x * x
}

/// Threads submitting at once while workers die: every task is answered
/// once, and only the task a worker died running fails.
fn many_submitters_and_dying_workers_lose_no_task() {
    let pool = Arc::new(Pool::builder().workers(2).build().unwrap());
    let per_thread = 1000u64;
    let submitters: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                (t * per_thread..(t + 1) * per_thread)
                    .map(|x| (x, pool.apply_async(square_or_die, x).unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for s in submitters {
        for (x, h) in s.join().unwrap() {
            match h.get() {
                Ok(v) => assert_eq!(v, x * x),
                Err(Error::WorkerDied { .. }) => {
                    assert_eq!(
                        x % 1000,
                        999,
                        "task {x} failed with a worker it did not kill"
                    )
                }
                Err(e) => panic!("task {x}: {e}"),
            }
        }
    }
}

/// Whether descriptor `fd` is open in this process.
fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD reads nothing of ours; a closed number is EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// A program that closed its standard streams. Its stdin: the pool's
/// segment got the lowest free descriptor, 0, where a child's start-up puts
/// `/dev/null`; every worker then refused the descriptor as not a pool's and
/// no pool could be built. All three: the pool's eventfd and pidfds took 0,
/// 1 and 2, and the program's own `println!` went into them (a user trial).
/// None of the descriptors the engine keeps may land there (one it opens
/// for a moment and closes may).
fn a_program_with_its_standard_streams_closed_builds_pools() {
    // SAFETY: plain descriptor calls on numbers this test owns; the harness
    // runs one test at a time, prints nothing while it runs, and the
    // streams are put back before it returns.
    let saved: Vec<i32> = (0..3)
        .map(|fd| unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })
        .collect();
    assert!(saved.iter().all(|&fd| fd > 2), "saving the streams");
    for fd in 0..3 {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    let mut taken = Vec::new();
    let built = Pool::builder().workers(2).build().and_then(|pool| {
        let out = pool.map(square, 0..100u64);
        // A replacement (a new pidfd) too.
        // SAFETY: a signal to our own worker, which the pool still holds.
        unsafe { libc::kill(pool.pids()[0], libc::SIGKILL) };
        let again = pool.map(square, 0..100u64);
        // The engine's threads may open a file for a moment (a child's
        // `/proc/<pid>/stat`), which takes the lowest free number: what
        // counts is a descriptor it keeps, one still there after such a
        // moment. Polled (no assertion here: the streams are closed).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            taken = (0..3).filter(|&fd| is_open(fd)).collect();
            if taken.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(pool);
        out.and(again)
    });
    // SAFETY: as above: the streams back, the saved copies closed.
    unsafe {
        for (fd, copy) in saved.into_iter().enumerate() {
            libc::dup2(copy, fd as i32);
            libc::close(copy);
        }
    }
    assert_eq!(built.unwrap()[99], 9801);
    assert_eq!(taken, Vec::<i32>::new(), "descriptors the pool put on 0-2");
}

/// Set in the environment of the program that
/// `a_program_run_through_the_dynamic_loader_is_told_why_it_has_no_pool`
/// starts.
const THROUGH_THE_LOADER: &str = "COREPOOL_TEST_THROUGH_THE_LOADER";

/// The x86-64 and aarch64 dynamic loaders' usual paths.
const LOADERS: [&str; 2] = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"];

/// The program of that test: what building a pool and starting a process
/// say, one line each.
fn through_the_loader() -> ! {
    let pool = Pool::new(1).map(|_| ()).map_err(|e| e.to_string());
    let process = corepool::Process::builder()
        .start(square, 3u64)
        .map(|_| ())
        .map_err(|e| e.to_string());
    println!("{pool:?}\n{process:?}");
    std::process::exit(0);
}

/// A program started through the dynamic loader (`ld.so ./program`) has the
/// loader as its executable, so a child (the executable run again) would
/// run the loader with no program: it used to fail after a start-up
/// timeout-like wait with "exited with status 0 before it was ready",
/// blaming an initializer. As for corepool inside a Python extension, the
/// pool and the process refuse at once, naming both files.
fn a_program_run_through_the_dynamic_loader_is_told_why_it_has_no_pool() {
    let Some(loader) = LOADERS.iter().find(|l| std::path::Path::new(l).exists()) else {
        eprintln!("skipped: no dynamic loader at a known path");
        return;
    };
    let mut command = std::process::Command::new(loader);
    command
        .arg(std::env::current_exe().unwrap())
        .env(THROUGH_THE_LOADER, "1");
    let output = common::output_within(&mut command, HUNG);
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{text}; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in lines {
        assert!(line.starts_with("Err(\"starting a child process failed: corepool starts its children by running this program's executable again, but the executable is "), "{line}");
        assert!(line.contains(loader.rsplit('/').next().unwrap()), "{line}");
        assert!(line.contains("must be run directly"), "{line}");
    }
    assert!(output.status.success(), "{output:?}");
}

/// Whether process `pid` is stopped (state `T` in `/proc`).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    })
}

/// Tasks pushed to a worker that is then stopped (SIGSTOP) before it starts
/// them go to the idle worker instead of waiting beside it until the
/// stopped one is continued (a user trial's last one waited 15 s, and would
/// have for ever without SIGCONT); the stopped worker serves again once
/// continued.
fn tasks_are_not_stranded_behind_a_stopped_worker() {
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 9801);
    let stopped = pool.pids()[0];
    // SAFETY: a signal to our own worker, which the pool still holds.
    unsafe { libc::kill(stopped, libc::SIGSTOP) };
    common::eventually("the worker is stopped", || is_stopped(stopped));
    let handles: Vec<_> = (0..4u64)
        .map(|x| pool.apply_async(square, x).unwrap())
        .collect();
    for (x, h) in (0..4u64).zip(handles) {
        assert_eq!(h.get_timeout(HUNG), Ok(x * x), "task {x}");
    }
    // SAFETY: as above.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    for x in 0..20u64 {
        assert_eq!(pool.apply(square, x).unwrap(), x * x);
    }
    assert!(pool.pids().contains(&stopped), "continued, not replaced");
}

/// Set in the environment of the program that
/// `a_pool_whose_program_dropped_privileges_ends_anyway` starts.
const UNKILLABLE_PARENT: &str = "COREPOOL_TEST_UNKILLABLE_PARENT";

/// Set in the environment of the program that
/// `a_timed_out_task_on_a_worker_we_may_not_kill_fails_anyway` starts.
const UNKILLABLE_TIMEOUT: &str = "COREPOOL_TEST_UNKILLABLE_TIMEOUT";

/// Says it started, then runs until it is killed from outside.
fn run_until_killed(started: AtomicValue<u64>) -> u64 {
    started.store(1);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The program of `a_pool_whose_program_dropped_privileges_ends_anyway`:
/// starts a never-ending task as root, becomes `nobody`, terminates the
/// pool and prints the worker's pid, the abandoned count and whether the
/// task was cancelled.
fn unkillable_parent() -> ! {
    use std::io::Write;
    // The worker will outlive this program: keep our stdout for the answer.
    let mut answer = common::answer_on_private_stdout();
    let pool = Pool::new(1).unwrap();
    let started = AtomicValue::new(0u64).unwrap();
    let task = pool.apply_async(run_until_killed, started.clone()).unwrap();
    // Bounded by the watchdog of the test that started this program.
    while started.load() == 0 {
        std::thread::yield_now();
    }
    let worker = pool.pids()[0];
    common::become_nobody();
    pool.terminate();
    pool.join().unwrap();
    let cancelled = matches!(task.get(), Err(Error::Cancelled));
    writeln!(answer, "{worker} {} {cancelled}", pool.stats().abandoned).unwrap();
    drop(pool);
    std::process::exit(0);
}

/// Runs this binary as the program `role` names, which prints the pid of a
/// worker it could no longer kill first, and ends that stray worker (we are
/// root) before any assertion can fail: the program's output and its text.
fn run_unkillable_parent(role: &str) -> (std::process::Output, String) {
    let output = common::run_self_as(role, HUNG);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let worker: i32 = match text.split_whitespace().next().and_then(|p| p.parse().ok()) {
        Some(pid) => pid,
        None => panic!(
            "no output: {text:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    // SAFETY: a signal to a pid the program just printed; we are root.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    common::eventually("the abandoned worker is gone", || common::is_gone(worker));
    (output, text)
}

/// A program that drops its privileges after building a pool can no longer
/// kill that pool's workers (they still run as the old user). `terminate`,
/// `join` and drop used to wait for ever for a death that never came; the
/// pool now gives such a worker up (counted in `PoolStats::abandoned`, its
/// task cancelled) and ends. The worker outlives the program, as
/// docs/fault-model.md says: the test ends it, as root.
fn a_pool_whose_program_dropped_privileges_ends_anyway() {
    if !common::is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let (output, text) = run_unkillable_parent(UNKILLABLE_PARENT);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[1..], ["1", "true"], "{text}");
    assert!(output.status.success(), "{output:?}");
}

/// Set in the parent only (workers are other processes): a `Bomb` dropped
/// there panics.
static BOMBS_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A result whose `Drop` panics in the parent.
#[derive(corepool::Wire)]
struct Bomb(u64);

impl Drop for Bomb {
    fn drop(&mut self) {
        if BOMBS_ARMED.load(std::sync::atomic::Ordering::Relaxed) {
            panic!("a result's Drop panics on purpose");
        }
    }
}

fn make_bomb(x: u64) -> Bomb {
    Bomb(x)
}

/// A result nobody took (its handle dropped before it came) is dropped by
/// the thread delivering it, often the driver: a `Drop` of the user's that
/// panics there must not end that thread. It used to be dropped just after
/// the guard around the delivery, and the panic ended the driver.
fn a_result_whose_drop_panics_does_not_end_the_driver() {
    let pool = Pool::builder().workers(1).build().unwrap();
    BOMBS_ARMED.store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..20u64 {
        drop(pool.apply_async(make_bomb, i).unwrap());
    }
    // Delivered by the driver: nobody helps.
    let (tx, rx) = mpsc::channel();
    let cb = Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
    pool.apply_async_with(square, 9, cb).unwrap();
    assert_eq!(rx.recv_timeout(HUNG), Ok(81), "the driver lives on");
    BOMBS_ARMED.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The program of `a_timed_out_task_on_a_worker_we_may_not_kill_fails_anyway`:
/// as `unkillable_parent`, with a task timeout and no `terminate`: prints
/// the worker's pid, what the task's `get` gave and the abandoned count.
fn unkillable_timeout() -> ! {
    use std::io::Write;
    let mut answer = common::answer_on_private_stdout();
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = AtomicValue::new(0u64).unwrap();
    let task = pool.apply_async(run_until_killed, started.clone()).unwrap();
    // Bounded by the watchdog of the test that started this program.
    while started.load() == 0 {
        std::thread::yield_now();
    }
    let worker = pool.pids()[0];
    common::become_nobody();
    let timed_out = matches!(task.get(), Err(Error::TaskTimedOut { .. }));
    writeln!(answer, "{worker} {timed_out} {}", pool.stats().abandoned).unwrap();
    drop(pool);
    std::process::exit(0);
}

/// A task that overran its timeout on a worker the program may no longer
/// kill (it dropped its privileges) waited for ever: the worker was marked
/// dying and its exit, which alone failed the task, never came. The task
/// now fails with `TaskTimedOut` and the worker is given up.
fn a_timed_out_task_on_a_worker_we_may_not_kill_fails_anyway() {
    if !common::is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let (output, text) = run_unkillable_parent(UNKILLABLE_TIMEOUT);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[1..], ["true", "1"], "{text}");
    assert!(output.status.success(), "{output:?}");
}

/// The run counter of `spin_counted`, in each worker.
static RUNS: std::sync::OnceLock<AtomicValue<u64>> = std::sync::OnceLock::new();

/// The workers' initializer: keeps the run counter.
fn keep_runs(runs: AtomicValue<u64>) {
    let _ = RUNS.set(runs);
}

/// Counts its start in `runs`, then spins (wall clock) for `us`
/// microseconds, or until its worker is killed if `us` is `u64::MAX`.
/// The counter comes from the worker's initializer, not with each task: a
/// task killed before it decoded its argument leaves a shared object's
/// handle in flight for ever, and the sender keeps the object open
/// (lingering, by design), which the harness's descriptor check counts as
/// a leak (seen once in CI under load).
fn spin_counted(us: u64) -> u64 {
    RUNS.get().expect("the initializer ran").fetch_add(1);
    let start = std::time::Instant::now();
    // Bounded by the task timeout, which kills the worker.
    while us == u64::MAX || start.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
    us
}

/// Many tasks overrun a short timeout, most of them by little, between
/// short ones: the pool's kill is decided while the overrunning task is
/// about to answer and the next is about to start. Every kill must fail
/// the task it was made for with `TaskTimedOut` (so `respawns` equals their
/// count), never another with `WorkerDied`, and no task may run twice, even
/// with `retries`.
fn timeout_kills_fail_exactly_their_task(retries: u32) {
    const TIMEOUT_MS: u64 = 5;
    let runs = AtomicValue::new(0u64).unwrap();
    let pool = Pool::builder()
        .workers(2)
        .initializer_with(keep_runs, runs.clone())
        .retries(retries)
        .task_timeout(Duration::from_millis(TIMEOUT_MS))
        .build()
        .unwrap();
    let n = 800u64;
    let mut endless = 0;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let us = if i % 10 == 0 {
                endless += 1;
                u64::MAX // times out whatever the machine's load
            } else if i % 2 == 0 {
                TIMEOUT_MS * 1000 * (80 + (i * 7919) % 41) / 100 // 80-120 %
            } else {
                50
            };
            pool.apply_async(spin_counted, us).unwrap()
        })
        .collect();
    let mut timed_out = 0u64;
    for (i, h) in handles.into_iter().enumerate() {
        match h.get() {
            Ok(_) => {}
            Err(Error::TaskTimedOut { .. }) => timed_out += 1,
            Err(e) => panic!("task {i} (retries {retries}): {e}"),
        }
    }
    assert!(timed_out >= endless, "{timed_out} < {endless}");
    let respawns = pool.stats().respawns;
    assert_eq!(
        respawns, timed_out,
        "retries {retries}: every worker killed for a timeout fails exactly its task"
    );
    // No task runs twice. A timed-out task may have been killed before its
    // first line ran (its worker marked it started, then lost its CPU for
    // the whole 5 ms under load: seen once in three loaded runs), so
    // fewer runs than tasks is no fault, by at most the timeouts.
    let ran = runs.load();
    assert!(
        ran <= n,
        "retries {retries}: a task ran again ({ran} runs of {n})"
    );
    assert!(
        ran + timed_out >= n,
        "retries {retries}: {ran} runs, {timed_out} timeouts, {n} tasks"
    );
    pool.close();
    pool.join().unwrap();
}

/// User trial 29: 1 timeout kill in 7 to 240 was reported to a task as
/// `WorkerDied` ("the OOM killer may have"), and with `retries` the task
/// ran again: the kill was decided on a stale view of what the worker ran.
fn a_timeout_kill_fails_exactly_the_overrunning_task() {
    timeout_kills_fail_exactly_their_task(0);
}

/// As above, with `retries`: a task killed for its timeout is not run again.
fn a_timeout_kill_is_never_retried() {
    timeout_kills_fail_exactly_their_task(3);
}

const SMALL_FILE_LIMIT: &str = "COREPOOL_TEST_SMALL_FILE_LIMIT";

/// The program of `a_file_size_limit_is_an_error_not_a_signal`: under a
/// 64 KiB file-size limit, what building a pool and making an array say.
fn small_file_limit() -> ! {
    let limit = libc::rlimit {
        rlim_cur: 64 << 10,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a struct that lives across it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    let efbig = |e: &Error| {
        matches!(e, Error::SharedMemory { source, .. } if source.raw_os_error() == Some(libc::EFBIG))
            && e.to_string().contains("ulimit -f")
    };
    let pool = Pool::new(1);
    let array = corepool::SharedArray::<u8>::new(1 << 20);
    println!(
        "pool {} array {}",
        pool.as_ref().err().is_some_and(efbig),
        array.as_ref().err().is_some_and(efbig)
    );
    std::process::exit(0);
}

/// Under `ulimit -f`, growing a shared-memory file past the limit made the
/// kernel send SIGXFSZ, whose default action ended the program without a
/// word (a user trial: `ulimit -f 4000` killed it in `Pool::build`). Now
/// the limit is asked first and the call is a typed error naming it.
fn a_file_size_limit_is_an_error_not_a_signal() {
    let output = common::run_self_as(SMALL_FILE_LIMIT, HUNG);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text.trim(), "pool true array true", "{output:?}");
}

const SMALL_ADDRESS_SPACE: &str = "COREPOOL_TEST_SMALL_ADDRESS_SPACE";

/// The address space this process maps now (`VmSize`), in bytes.
fn address_space_now() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line["VmSize:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// The program of `an_address_space_limit_fails_an_array_before_reserving_it`:
/// under an address-space limit 256 MiB above what it maps now, what making
/// arrays past the limit, past the room left, and within it says.
fn small_address_space() -> ! {
    let limit = libc::rlimit {
        rlim_cur: address_space_now() + (256 << 20),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a struct that lives across it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    // ENOMEM with the `ulimit -v` advice, from the check made before the
    // memory is reserved (its step says so): nothing was committed.
    let refused_early = |e: &Error| {
        matches!(e, Error::SharedMemory { op, source }
            if source.raw_os_error() == Some(libc::ENOMEM) && op.contains("before reserving"))
            && e.to_string().contains("ulimit -v")
    };
    // 8 GiB, as in the user trial: past the limit itself.
    let huge = corepool::SharedArray::<f64>::new(1 << 30);
    // 512 MiB: past the room the limit leaves.
    let over = corepool::SharedArray::<u8>::new(512 << 20);
    let small = corepool::SharedArray::<u8>::new(1 << 20);
    println!(
        "huge {} over {} small {}",
        huge.as_ref().err().is_some_and(refused_early),
        over.as_ref().err().is_some_and(refused_early),
        small.is_ok_and(|a| a.len() == 1 << 20),
    );
    std::process::exit(0);
}

/// Under `ulimit -v`, `SharedArray::new` reserved (committed) all of its
/// memory before the mmap that the limit refused: 8 GiB of RAM for 1.6-2.6 s
/// in a user trial. Now the limit's room is looked at first, and the same
/// typed error comes at once.
fn an_address_space_limit_fails_an_array_before_reserving_it() {
    let output = common::run_self_as(SMALL_ADDRESS_SPACE, HUNG);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text.trim(), "huge true over true small true", "{output:?}");
}

// ---- a SIGTERM sent to every process of a program --------------------------

/// Sends SIGTERM to a program it starts and says what ended it: a task's
/// own programs keep their usual dispositions.
fn sigterm_a_program_of_its_own(_: u64) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    // SAFETY: signals the child just started, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap().signal().unwrap_or(0)
}

fn a_worker_outlives_sigterm_sigint_and_sighup() {
    // What systemd (KillMode=control-group) or `pkill prog` does: the
    // signal reaches the workers too. A worker's parent ends it itself, so
    // it finishes its task and goes on serving; the parent's graceful
    // shutdown (`close`, `join`) loses nothing (user trial 30).
    let pool = Pool::builder().workers(1).build().unwrap();
    let gate = AtomicValue::new(0u64).unwrap();
    let task = pool.apply_async(wait_for_gate, gate.clone()).unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), 1);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: signals this pool's live worker (its task waits).
        assert_eq!(unsafe { libc::kill(pids[0], signal) }, 0);
    }
    // The worker runs on: its task answers once the gate opens.
    gate.store(1);
    assert_eq!(task.get_timeout(HUNG).unwrap(), 7);
    assert_eq!(pool.pids(), pids, "the worker was replaced");
    // A program a task starts dies of SIGTERM as usual (a handler, unlike
    // an ignored signal, does not cross exec).
    assert_eq!(
        pool.apply(sigterm_a_program_of_its_own, 0).unwrap(),
        libc::SIGTERM
    );
    pool.close();
    pool.join().unwrap();
}

/// Recurses until its stack is gone.
#[allow(unconditional_recursion)]
fn overflow_the_stack(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    overflow_the_stack(n + 1) + frame[0]
}

fn a_stack_overflow_in_a_task_is_named_in_its_error() {
    // Workers start before `main`: Rust's "has overflowed its stack"
    // handler is not there, so the error says it (user trial 30).
    let pool = Pool::builder().workers(1).build().unwrap();
    let err = pool.apply(overflow_the_stack, 0).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WorkerDied {
                cause: corepool::ExitCause::Signal(11),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("stack overflow"), "{err}");
    // The replacement serves.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

// ---- a call in flight when the program exits ----------------------------------

const EXIT_MID_CALL: &str = "COREPOOL_TEST_EXIT_MID_CALL";

/// What the thread in the middle of a call got, for the `atexit` handler
/// below to print.
static MID_CALL: std::sync::Mutex<Option<mpsc::Receiver<String>>> = std::sync::Mutex::new(None);

/// Registered before any pool, so it runs after corepool's own handler
/// (`atexit` handlers run in reverse order): prints what the call got once
/// corepool's handler has stopped the pool.
extern "C" fn print_what_the_call_got() {
    let rx = MID_CALL.lock().unwrap().take().unwrap();
    let got = rx
        .recv_timeout(HUNG)
        .unwrap_or_else(|e| format!("nothing: {e}"));
    println!("{got}");
}

/// As a program of its own: a thread waits in `apply` on a task that runs
/// for ever (with `retries`, when the variable says so) while `main` calls
/// `std::process::exit`.
fn exit_mid_call() -> ! {
    let (tx, rx) = mpsc::channel();
    *MID_CALL.lock().unwrap() = Some(rx);
    // SAFETY: registers a C-ABI function that takes no arguments.
    assert_eq!(unsafe { libc::atexit(print_what_the_call_got) }, 0);
    let retries = std::env::var(EXIT_MID_CALL).unwrap() == "retries";
    let pool = Pool::builder()
        .workers(1)
        .retries(if retries { 5 } else { 0 })
        .build()
        .unwrap();
    let pool = Arc::new(pool);
    let gate = AtomicValue::new(0u64).unwrap();
    let (started_tx, started) = mpsc::channel();
    let waiter = pool.clone();
    std::thread::spawn(move || {
        let task = waiter.apply_async(wait_for_gate, gate).unwrap();
        started_tx.send(()).unwrap();
        let got = task.get();
        let _ = tx.send(format!("{got:?}"));
    });
    started.recv_timeout(HUNG).unwrap();
    std::process::exit(0);
}

fn a_call_in_flight_at_exit_is_cancelled() {
    // It was `WorkerDied` blaming the OOM killer, or with `retries` a
    // `Spawn` error about `ulimit -u` (user trial 30).
    for mode in ["plain", "retries"] {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.env(EXIT_MID_CALL, mode);
        // Longer than the child's own wait, so that its diagnostic is read.
        let output = common::output_within(&mut command, 2 * HUNG);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{mode}: {output:?}");
        assert_eq!(text.trim(), "Err(Cancelled)", "{mode}: {output:?}");
    }
}

fn main() {
    if std::env::var_os(SMALL_ADDRESS_SPACE).is_some() {
        small_address_space();
    }
    if std::env::var_os(UNKILLABLE_TIMEOUT).is_some() {
        unkillable_timeout();
    }
    if std::env::var_os(UNKILLABLE_PARENT).is_some() {
        unkillable_parent();
    }
    if std::env::var_os(THROUGH_THE_LOADER).is_some() {
        through_the_loader();
    }
    if std::env::var_os(EXIT_MID_CALL).is_some() {
        exit_mid_call();
    }
    if std::env::var_os(SMALL_FILE_LIMIT).is_some() {
        small_file_limit();
    }
    corepool::init();
    common::run(common::tests![
        a_panicking_callback_affects_only_its_task,
        a_panicking_callback_on_a_waiting_caller_affects_only_its_task,
        a_panicking_decoder_fails_only_its_task,
        waiting_inside_a_callback_fails_at_once,
        waiting_inside_a_raw_done_fails_at_once,
        dropping_the_last_pool_inside_a_callback_returns,
        a_forked_copy_of_a_pool_leaves_the_parents_workers_alone,
        tasks_are_not_stranded_behind_a_starting_replacement,
        a_start_that_overruns_start_timeout_is_retried,
        chunk_sizes_out_of_range_fail_alike_everywhere,
        max_queued_bounds_the_tasks_queued_in_the_parent,
        a_submitter_blocked_by_max_queued_wakes_on_terminate,
        a_submitter_blocked_by_max_queued_wakes_on_close,
        a_submitter_blocked_by_max_queued_collects_while_the_driver_is_held_up,
        a_task_submitted_while_a_callback_waits_for_it_is_dispatched,
        many_submitters_and_dying_workers_lose_no_task,
        a_program_with_its_standard_streams_closed_builds_pools,
        a_program_run_through_the_dynamic_loader_is_told_why_it_has_no_pool,
        a_pool_whose_program_dropped_privileges_ends_anyway,
        tasks_are_not_stranded_behind_a_stopped_worker,
        a_result_whose_drop_panics_does_not_end_the_driver,
        a_timed_out_task_on_a_worker_we_may_not_kill_fails_anyway,
        a_timeout_kill_fails_exactly_the_overrunning_task,
        a_timeout_kill_is_never_retried,
        a_file_size_limit_is_an_error_not_a_signal,
        an_address_space_limit_fails_an_array_before_reserving_it,
        a_worker_outlives_sigterm_sigint_and_sighup,
        a_stack_overflow_in_a_task_is_named_in_its_error,
        a_call_in_flight_at_exit_is_cancelled,
    ]);
}
