//! Respawning under shortage and trouble: a pool that could not start a
//! worker for a while comes back to full strength, and a supervisor that
//! could not watch its workers kills nobody and says so. Runs with its own
//! `main`.

mod common;

use corepool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

/// SIGKILLs one of our own workers.
fn kill(pid: i32) {
    // SAFETY: kill with integer arguments, on a worker of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// While it lives, this process cannot open a descriptor (`RLIMIT_NOFILE`
/// lowered to 3: the standard streams stay, nothing new fits), so a worker
/// cannot be started (`EMFILE`). Dropping it restores the limit, on a
/// panic too, so that the harness can look at `/proc` afterwards.
struct DescriptorShortage {
    saved: libc::rlimit,
}

impl DescriptorShortage {
    fn begin() -> Self {
        let mut saved = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into `saved`, which we own.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved) };
        assert_eq!(got, 0);
        let low = libc::rlimit {
            rlim_cur: 3,
            rlim_max: saved.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` from `low`, which we own.
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) };
        assert_eq!(set, 0);
        Self { saved }
    }
}

impl Drop for DescriptorShortage {
    fn drop(&mut self) {
        // SAFETY: setrlimit reads one `rlimit` from `self.saved`, which we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.saved) };
    }
}

/// Fault 5: a replacement that cannot be started while descriptors are
/// short fails three times, backing off, then its slot rests; once
/// descriptors are free again, the slot's next try brings the pool back to
/// full strength. (Before: three immediate tries, then the slot was gone
/// for the pool's whole life.)
fn a_brief_descriptor_shortage_costs_no_worker_for_ever() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let shortage = DescriptorShortage::begin();
    kill(pool.pids()[0]);
    common::eventually("the replacement failed to start three times", || {
        pool.stats().start_failures >= 3
    });
    assert_eq!(pool.pids().len(), 1, "no replacement could start");
    assert_eq!(pool.apply(square, 7), Ok(49), "the other worker serves");
    drop(shortage);
    common::eventually("two workers again", || pool.pids().len() == 2);
    let squares = pool.map(square, 0..200u64).unwrap();
    assert_eq!(squares, (0..200u64).map(square).collect::<Vec<_>>());
}

/// Fault 5, every worker lost: while no worker can start, tasks fail with
/// the start error (they never wait for ever) and new ones are refused with
/// it; once descriptors are free again the pool serves again. (Before:
/// every task failed with `Spawn` for the rest of the pool's life.)
fn a_pool_that_lost_every_worker_to_a_shortage_comes_back() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let shortage = DescriptorShortage::begin();
    for pid in pool.pids() {
        kill(pid);
    }
    common::eventually("both deaths seen", || pool.pids().is_empty());
    let queued: Vec<_> = (0..5u64).map(|i| pool.apply_async(square, i)).collect();
    for outcome in queued {
        match outcome.and_then(|handle| handle.get()) {
            Err(Error::Spawn { source, .. }) => {
                assert_eq!(source.and_then(|e| e.raw_os_error()), Some(libc::EMFILE))
            }
            other => panic!("expected the start error (Spawn, EMFILE), got {other:?}"),
        }
    }
    assert!(
        matches!(pool.apply_async(square, 1), Err(Error::Spawn { .. })),
        "refused while no worker can start"
    );
    drop(shortage);
    common::eventually("the pool serves again", || pool.apply(square, 3) == Ok(9));
    common::eventually("two workers again", || pool.pids().len() == 2);
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
}

/// Fault 4: a `poll` of the supervisor that fails kills nobody, the pool
/// goes on serving, and the failure shows in `PoolStats`.
fn a_failed_poll_kills_nobody_and_is_reported() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut pids = pool.pids();
    corepool::testing::fail_next_supervisor_polls(&pool, 3);
    common::eventually("three failed polls reported", || {
        pool.stats().supervisor_errors >= 3
    });
    let stats = pool.stats();
    let last = stats.last_supervisor_error.unwrap_or_default();
    assert!(last.contains("fault-injection"), "{last}");
    assert_eq!(stats.respawns, 0, "no worker was replaced");
    assert_eq!(pool.map(square, 0..200u64).unwrap().len(), 200);
    let mut now = pool.pids();
    pids.sort_unstable();
    now.sort_unstable();
    assert_eq!(now, pids, "the same workers serve");
    // Deaths are still seen once `poll` works again.
    kill(pids[0]);
    common::eventually("the dead worker is replaced", || {
        pool.stats().respawns == 1 && pool.pids().len() == 2
    });
}

fn main() {
    corepool::init();
    common::run(common::tests![
        a_failed_poll_kills_nobody_and_is_reported,
        a_brief_descriptor_shortage_costs_no_worker_for_ever,
        a_pool_that_lost_every_worker_to_a_shortage_comes_back,
    ]);
}
