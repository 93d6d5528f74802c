//! Workers that break the shared-memory protocol: the parent must neither
//! read out of bounds, panic nor hang; it kills the worker, fails its tasks
//! and goes on with a replacement. Runs with its own `main`.

mod common;

use corepool::testing::{driver_has_work, forge_chunk_results, sabotage, ChunkLie, Sabotage};
use corepool::{Error, ExitCause, Pool, SharedArray};
use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

fn misbehave(how: u8) -> u64 {
    let how = match how {
        0 => Sabotage::StampOutOfRange,
        1 => Sabotage::UnknownTaskId,
        _ => Sabotage::BadRecordLength,
    };
    assert!(sabotage(how), "runs in a worker");
    // Keep running: the parent must notice on its own and kill us.
    loop {
        std::hint::spin_loop();
    }
}

fn check_survives(how: u8) {
    let pool = Pool::builder().workers(2).build().unwrap();
    let others: Vec<_> = (0..200u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    match pool.apply(misbehave, how) {
        Err(Error::ProtocolViolation { what, .. }) => assert!(!what.is_empty()),
        other => panic!("expected ProtocolViolation, got {other:?}"),
    }
    for (i, h) in others.into_iter().enumerate() {
        match h.get() {
            Ok(v) => assert_eq!(v, (i * i) as u64),
            Err(Error::ProtocolViolation { .. }) => {} // was queued on the bad worker
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // The pool goes on, with a replacement.
    assert_eq!(pool.map(square, 0..1000u64).unwrap().len(), 1000);
    common::eventually("two workers again", || pool.pids().len() == 2);
}

fn stamp_out_of_range_kills_only_the_bad_worker() {
    check_survives(0);
}

fn unknown_task_id_kills_only_the_bad_worker() {
    check_survives(1);
}

fn bad_record_length_kills_only_the_bad_worker() {
    check_survives(2);
}

/// Writes garbage into its result ring's `head` and `tail`, then answers.
fn scribble_head(x: u64) -> u64 {
    assert!(sabotage(Sabotage::GarbageInHead), "runs in a worker");
    x + 1
}

/// A worker that writes garbage into its result ring's `head` (the
/// parent's monitor word) and `tail` (its own) changes nothing: the parent
/// reads neither, the task's result arrives, nobody is killed, and the
/// driver comes to rest. (Until protocol version 5 the driver asked
/// `head != tail` before it slept, and a garbage `head` kept it passing,
/// burning a core, for as long as the pool lived.)
fn garbage_in_a_result_head_keeps_nobody_busy() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.pids();
    for i in 0..20u64 {
        assert_eq!(pool.apply(scribble_head, i).unwrap(), i + 1);
    }
    common::eventually("the driver at rest", || !driver_has_work(&pool));
    for _ in 0..1000 {
        assert!(!driver_has_work(&pool), "the driver stays at rest");
    }
    assert_eq!(pool.map(square, 0..1000u64).unwrap().len(), 1000);
    assert_eq!(pool.pids(), pids, "nobody was killed");
    common::eventually("the driver at rest", || !driver_has_work(&pool));
}

/// Returns `x`; at 550 makes its chunk's results lie (`lie` picks how; 4
/// and above: honest).
fn lies_at_550((x, lie): (u64, u8)) -> u64 {
    let how = match lie {
        0 => ChunkLie::CountTooHigh,
        1 => ChunkLie::CountHuge,
        2 => ChunkLie::ValueMissing,
        3 => ChunkLie::ValueExtra,
        _ => return x,
    };
    if x == 550 {
        forge_chunk_results(how);
    }
    x
}

/// Plain results are copied from the result ring straight into the map's
/// output, after checks of their count and length: a chunk whose results
/// lie about either fails the map (as a decode error, as before the copy
/// went straight to the output), never a short, long or garbled output;
/// the honest chunks around it are unaffected and the pool goes on.
fn lying_chunk_results_fail_the_map_not_the_parent() {
    let pool = Pool::builder().workers(2).build().unwrap();
    for lie in 0..4u8 {
        let items: Vec<(u64, u8)> = (0..1000u64).map(|x| (x, lie)).collect();
        match pool.chunked(100).unwrap().map(lies_at_550, items) {
            Err(Error::Decode { .. }) => {}
            other => panic!("lie {lie}: expected a decode error, got {other:?}"),
        }
        let honest: Vec<(u64, u8)> = (0..1000u64).map(|x| (x, u8::MAX)).collect();
        let out = pool.chunked(100).unwrap().map(lies_at_550, honest).unwrap();
        assert_eq!(out, (0..1000u64).collect::<Vec<_>>());
    }
}

fn other_children_of_the_program_are_left_alone() {
    // A child that is not a worker: the pool must never reap it.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    {
        let pool = Pool::builder().workers(2).build().unwrap();
        let _ = pool.apply(|_: u64| -> u64 { std::process::exit(3) }, 0);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
    }
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "our own child is still ours, unreaped"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

const ROLE: &str = "COREPOOL_TEST_ROLE";

/// In the child started by `workers_die_with_a_sigkilled_parent`: build a
/// pool, report the workers' pids and its fork server's (the default start
/// method's, started by that pool), and wait to be killed.
fn play_doomed_parent() -> ! {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut pids = pool.pids();
    pids.extend(corepool::fork_server_pid());
    println!(
        "{}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

fn workers_die_with_a_sigkilled_parent() {
    use std::io::BufRead;
    // Orphans get reparented to us, so that we can reap them and the
    // harness can see any that survive.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "doomed-parent")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let workers: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Two workers, and the program's fork server, which dies with it too.
    assert_eq!(workers.len(), 3, "{line:?}");
    parent.kill().unwrap(); // SIGKILL: no destructor runs
    parent.wait().unwrap();
    common::eventually("workers gone after their parent was SIGKILLed", || {
        workers.iter().all(|&w| common::is_gone(w))
    });
    for w in workers {
        // Reparented to us: reap them (ECHILD if already reaped is fine).
        // SAFETY: waitpid on a specific pid with a null status pointer.
        unsafe { libc::waitpid(w, std::ptr::null_mut(), 0) };
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
}

/// Dies on its first run (counted in shared memory), succeeds after.
fn dies_once(counter: SharedArray<u64>) -> u64 {
    let runs = counter.get(0).unwrap();
    counter.set(0, runs + 1).unwrap();
    if runs == 0 {
        std::process::exit(1);
    }
    runs
}

fn retries_rerun_a_task_whose_worker_died() {
    let pool = Pool::builder().workers(2).retries(1).build().unwrap();
    let counter = SharedArray::<u64>::new(1).unwrap();
    assert_eq!(pool.apply(dies_once, counter.clone()).unwrap(), 1);
    assert_eq!(counter.get(0), Some(2));

    let no_retry = Pool::builder().workers(2).build().unwrap();
    let counter = SharedArray::<u64>::new(1).unwrap();
    match no_retry.apply(dies_once, counter) {
        Err(Error::WorkerDied {
            cause: ExitCause::Code(1),
            ..
        }) => {}
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

fn always_dies(counter: SharedArray<u64>) -> u64 {
    counter.set(0, counter.get(0).unwrap() + 1).unwrap();
    // SAFETY: dying is the point.
    unsafe { libc::raise(libc::SIGKILL) };
    0
}

/// A worker dies while callers wait: each waiting caller helps (and gates
/// the driver), gets its answer and leaves with nothing outstanding. The
/// replacement's start must still be applied with no new submission (a bug
/// once left its `Spawned` event unapplied behind a gated driver). Racy by
/// nature, so many rounds, with two threads burning CPU so that the callers
/// are preempted in the window (without them it hid on an idle machine).
fn a_replacement_is_applied_after_the_callers_leave() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        // Stops the burners even when a round fails.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        replacement_rounds();
    });
}

fn replacement_rounds() {
    for round in 0..40 {
        let pool = Pool::builder().workers(2).build().unwrap();
        let counter = SharedArray::<u64>::new(1).unwrap();
        let others: Vec<_> = (0..200u64)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        assert!(matches!(
            pool.apply(always_dies, counter.clone()),
            Err(Error::WorkerDied { .. })
        ));
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.get().unwrap(), (i * i) as u64, "requeued, not lost");
        }
        common::eventually(
            &format!("round {round}: the replacement is up with no new work"),
            || pool.stats().replacements.len() == 1,
        );
    }
}

fn a_task_that_kills_every_worker_fails_after_its_attempts() {
    let pool = Pool::builder().workers(2).retries(3).build().unwrap();
    let counter = SharedArray::<u64>::new(1).unwrap();
    match pool.apply(always_dies, counter.clone()) {
        Err(Error::WorkerDied {
            cause: ExitCause::Signal(libc::SIGKILL),
            ..
        }) => {}
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        counter.get(0),
        Some(4),
        "one run and three retries, no more"
    );
    // The pool recovers once the poison is gone (respawns back off, then serve).
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

fn spin_forever(_: u64) -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

fn task_timeout_kills_and_replaces_the_worker() {
    let pool = Pool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let before = pool.pids();
    let others: Vec<_> = (0..100u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    match pool.apply(spin_forever, 0) {
        Err(Error::TaskTimedOut { after, rank }) => {
            assert_eq!(after, Duration::from_millis(200));
            assert_eq!(rank, None, "this program's own pool");
        }
        other => panic!("expected TaskTimedOut, got {other:?}"),
    }
    for (i, h) in others.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    common::eventually("replaced", || {
        pool.pids().len() == 2 && pool.pids() != before
    });
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
}

/// A worker takes a task without telling the parent, so a pass may find the
/// task still waiting and the next one never come: the timeout must still
/// fire. Each round races the worker's take against the parent's last look.
fn a_timeout_fires_for_a_task_taken_after_the_parent_looked() {
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    for round in 0..20 {
        match pool.apply(spin_forever, round) {
            Err(Error::TaskTimedOut { .. }) => {}
            other => panic!("round {round}: expected TaskTimedOut, got {other:?}"),
        }
    }
    assert_eq!(pool.apply(square, 6).unwrap(), 36);
}

/// Nobody waits for the result, so no caller drives the pool: the driver,
/// asleep since the pool went idle, must learn of the new deadline.
fn a_timeout_fires_with_nobody_waiting() {
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    for round in 0..5 {
        // Shapes the scenario, synchronizes nothing: idle this long, the
        // driver has given up spinning and sleeps on the doorbell with no
        // deadline, which is where it used to stay.
        std::thread::sleep(Duration::from_millis(20));
        let (tx, rx) = std::sync::mpsc::channel();
        let cb = corepool::Callbacks::new().on_error(move |e| tx.send(e.clone()).unwrap());
        let _handle = pool.apply_async_with(spin_forever, round, cb).unwrap();
        // Blocks without touching the pool; the watchdog fails a hang.
        assert!(matches!(rx.recv().unwrap(), Error::TaskTimedOut { .. }));
    }
}

/// Starts a grandchild (`sleep`), reports its pid, then dies.
fn start_grandchild_and_die(pids: SharedArray<u64>) -> u64 {
    let child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    pids.set(0, child.id() as u64).unwrap();
    std::mem::forget(child);
    // SAFETY: dying is the point.
    unsafe { libc::raise(libc::SIGKILL) };
    0
}

fn processes_a_task_started_die_with_its_worker() {
    // Orphaned grandchildren would be reparented to us: we can reap them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let pool = Pool::builder().workers(1).build().unwrap();
    let pids = SharedArray::<u64>::new(1).unwrap();
    assert!(matches!(
        pool.apply(start_grandchild_and_die, pids.clone()),
        Err(Error::WorkerDied { .. })
    ));
    let grandchild = pids.get(0).unwrap() as i32;
    assert!(grandchild > 0);
    common::eventually("the task's own child was killed with its worker", || {
        common::is_gone(grandchild)
    });
    // SAFETY: waitpid on a specific pid; it may already be gone (ECHILD).
    unsafe { libc::waitpid(grandchild, std::ptr::null_mut(), libc::WNOHANG) };
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
}

fn count_then_abort(arg: (SharedArray<u64>, Vec<u8>)) -> u64 {
    let (runs, _) = arg;
    runs.set(0, runs.get(0).unwrap() + 1).unwrap();
    let end = std::time::Instant::now() + Duration::from_millis(50);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    std::process::abort();
}

fn page_sized(v: Vec<u8>) -> u64 {
    v.len() as u64
}

fn a_crash_after_its_bytes_were_reused_still_fails_once() {
    // Records of exactly 8 KiB: while the last task of a batch runs, its
    // released bytes are refilled with a new record whose header lands on
    // the old one. The parent must not read the new tag as the old task's.
    let pool = Pool::builder().workers(1).build().unwrap();
    let runs = SharedArray::<u64>::new(1).unwrap();
    let crash = pool
        .apply_async(count_then_abort, (runs.clone(), vec![0u8; 8112]))
        .unwrap();
    let rest: Vec<_> = (0..128)
        .map(|_| pool.apply_async(page_sized, vec![1u8; 8152]).unwrap())
        .collect();
    assert!(matches!(
        crash.get(),
        Err(Error::WorkerDied {
            cause: ExitCause::Signal(libc::SIGABRT),
            ..
        })
    ));
    for h in rest {
        assert_eq!(h.get().unwrap(), 8152);
    }
    assert_eq!(runs.get(0), Some(1), "the crashing task ran exactly once");
}

fn busy_ms(ms: u64) -> u64 {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

fn an_idle_worker_killed_from_outside_is_replaced() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let victim = pool.pids()[0];
    // SAFETY: kill with integer arguments, on our own worker.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    common::eventually("replaced", || {
        pool.pids().len() == 2 && !pool.pids().contains(&victim)
    });
    assert_eq!(pool.map(square, 0..1000u64).unwrap().len(), 1000);
    assert_eq!(pool.stats().respawns, 1);
}

fn workers_dying_together_are_all_resolved() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let handles: Vec<_> = (0..40u64)
        .map(|_| pool.apply_async(busy_ms, 20).unwrap())
        .collect();
    // Both die at once while running tasks: their SIGCHLDs would merge.
    for pid in pool.pids() {
        // SAFETY: kill with integer arguments, on our own worker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (mut ok, mut died) = (0, 0);
    for h in handles {
        match h.get() {
            Ok(20) => ok += 1,
            Err(Error::WorkerDied { .. }) => died += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok + died, 40);
    assert!(died <= 2, "only the two running tasks may fail, {died} did");
}

fn terminate_while_workers_crash_ends_promptly() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let handles: Vec<_> = (0..20u64)
        .map(|_| pool.apply_async(busy_ms, 5).unwrap())
        .collect();
    for pid in pool.pids() {
        // SAFETY: kill with integer arguments, on our own worker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    pool.terminate();
    pool.join().unwrap();
    for h in handles {
        assert!(matches!(
            h.get(),
            Ok(5) | Err(Error::Cancelled) | Err(Error::WorkerDied { .. })
        ));
    }
}

fn close_then_join_while_a_worker_crashes() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let handles: Vec<_> = (0..20u64)
        .map(|_| pool.apply_async(busy_ms, 5).unwrap())
        .collect();
    pool.close();
    let victim = pool.pids()[0];
    // SAFETY: kill with integer arguments, on our own worker.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    pool.join().unwrap();
    for h in handles {
        assert!(
            matches!(h.get(), Ok(5) | Err(Error::WorkerDied { .. })),
            "every task has an outcome"
        );
    }
}

/// A marker file that makes `fragile_init` fail: set by the test after the
/// pool started, so that only replacements fail to start.
fn poison_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "corepool-poison-{}",
        std::os::unix::process::parent_id()
    ))
}

fn fragile_init() {
    if poison_path().exists() {
        panic!("replacement refused to start");
    }
}

fn workers_that_cannot_restart_fail_pending_work_without_a_loop() {
    let pool = Pool::builder()
        .workers(2)
        .initializer(fragile_init)
        .build()
        .unwrap();
    let marker = std::env::temp_dir().join(format!("corepool-poison-{}", std::process::id()));
    std::fs::write(&marker, b"").unwrap();
    // Both workers die while tasks wait; every restart fails.
    let stuck: Vec<_> = (0..2u64)
        .map(|_| pool.apply_async(busy_ms, 60_000).unwrap())
        .collect();
    let queued: Vec<_> = (0..10u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for pid in pool.pids() {
        // SAFETY: kill with integer arguments, on our own worker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for h in stuck {
        // Killed while running it, or never started before the kill.
        assert!(matches!(
            h.get(),
            Err(Error::WorkerDied { .. } | Error::WorkerStart { .. })
        ));
    }
    for h in queued {
        match h.get() {
            Err(Error::WorkerStart { reason, .. }) => {
                assert!(reason.contains("refused to start"), "{reason}")
            }
            other => panic!("expected WorkerStart, got {other:?}"),
        }
    }
    // Bounded: three failed starts per slot, then the pool gives up.
    let respawns = pool.stats().respawns;
    assert!(respawns <= 2 * 3, "{respawns} respawns: no busy loop");
    assert!(
        matches!(pool.apply_async(square, 1), Err(Error::WorkerStart { .. })),
        "later work is refused"
    );
    std::fs::remove_file(marker).unwrap();
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        corepool::init();
        play_doomed_parent();
    }
    common::run(common::tests![
        workers_that_cannot_restart_fail_pending_work_without_a_loop,
        an_idle_worker_killed_from_outside_is_replaced,
        workers_dying_together_are_all_resolved,
        terminate_while_workers_crash_ends_promptly,
        close_then_join_while_a_worker_crashes,
        a_crash_after_its_bytes_were_reused_still_fails_once,
        retries_rerun_a_task_whose_worker_died,
        a_task_that_kills_every_worker_fails_after_its_attempts,
        a_replacement_is_applied_after_the_callers_leave,
        task_timeout_kills_and_replaces_the_worker,
        a_timeout_fires_for_a_task_taken_after_the_parent_looked,
        a_timeout_fires_with_nobody_waiting,
        processes_a_task_started_die_with_its_worker,
        other_children_of_the_program_are_left_alone,
        workers_die_with_a_sigkilled_parent,
        stamp_out_of_range_kills_only_the_bad_worker,
        unknown_task_id_kills_only_the_bad_worker,
        bad_record_length_kills_only_the_bad_worker,
        garbage_in_a_result_head_keeps_nobody_busy,
        lying_chunk_results_fail_the_map_not_the_parent,
    ]);
}
