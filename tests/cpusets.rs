//! Multi-process tests of workers pinned to several CPUs
//! (`PoolBuilder::cpus_per_worker`): what a task, and the threads it starts,
//! see. Runs with its own `main` (`harness = false`) because workers
//! re-execute this binary.

mod common;

use corepool::{info, Error, Pinning, Pool};

/// What a task sees of its own placement.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    pid: i32,
    /// `std::thread::available_parallelism()`: what rayon's default pool
    /// sizes itself by.
    parallelism: usize,
    /// The CPUs each of `parallelism` threads the task starts may run on.
    thread_cpus: Vec<Vec<usize>>,
}

/// Runs [`look_around`] on the pool.
fn seen_by_a_task(pool: &Pool) -> Seen {
    let (pid, parallelism, thread_cpus) = pool.apply(look_around, ()).unwrap();
    Seen {
        pid,
        parallelism,
        thread_cpus,
    }
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts as many threads as the worker says it can run side by side, as a
/// rayon pool would, and reports its pid, that number, and where each thread
/// may run.
fn look_around(_: ()) -> (i32, usize, Vec<Vec<usize>>) {
    let parallelism = parallelism();
    let thread_cpus = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..parallelism)
            .map(|_| scope.spawn(|| info::allowed_cpus().unwrap()))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    (std::process::id() as i32, parallelism, thread_cpus)
}

/// The parallelism a task pinned to `set` should see: a cgroup CPU quota
/// (seen by the parent too) may lower it below the set's size.
fn expected_parallelism(set: &[usize]) -> usize {
    set.len().min(parallelism())
}

/// Checks that the pool's only worker runs tasks whose threads share `set`.
fn tasks_see(pool: &Pool, set: &[usize]) -> i32 {
    let seen = seen_by_a_task(pool);
    assert_eq!(seen.parallelism, expected_parallelism(set));
    assert_eq!(seen.thread_cpus.len(), seen.parallelism);
    for cpus in &seen.thread_cpus {
        assert_eq!(cpus, set, "a task's threads inherit its worker's CPUs");
    }
    seen.pid
}

fn two_cpus_per_worker_give_a_task_two_threads() {
    let allowed = info::allowed_cpus().unwrap();
    let pool = Pool::builder().cpus_per_worker(2).build().unwrap();
    // On a 2-CPU machine: one worker on both CPUs.
    assert_eq!(pool.workers(), (allowed.len() / 2).max(1));
    assert_eq!(pool.cpu_sets().len(), pool.workers());
    let each = allowed.len().min(2);
    for set in pool.cpu_sets() {
        assert_eq!(set.len(), each, "{set:?}");
        assert!(set.iter().all(|cpu| allowed.contains(cpu)), "{set:?}");
    }
    if each > 1 {
        assert!(pool.cpus().iter().all(Option::is_none), "several CPUs each");
    }
    // No CPU is given to two workers when the count is the default.
    let mut all: Vec<usize> = pool.cpu_sets().concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), pool.workers() * each);

    let pids = pool.pids();
    for (pid, set) in pids.iter().zip(pool.cpu_sets()) {
        assert_eq!(&info::affinity_of(*pid).unwrap(), set, "worker {pid}");
    }
    if pool.workers() == 1 {
        assert_eq!(tasks_see(&pool, &pool.cpu_sets()[0]), pids[0]);
    }
}

fn a_replacement_gets_the_same_set() {
    let allowed = info::allowed_cpus().unwrap();
    let pool = Pool::builder()
        .workers(1)
        .cpus_per_worker(2)
        .build()
        .unwrap();
    let set = pool.cpu_sets()[0].clone();
    assert_eq!(set.len(), allowed.len().min(2));
    let victim = tasks_see(&pool, &set);
    // SAFETY: kill with integer arguments, on our own worker.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    common::eventually("replaced", || {
        pool.pids().len() == 1 && !pool.pids().contains(&victim)
    });
    let replacement = pool.pids()[0];
    assert_eq!(info::affinity_of(replacement).unwrap(), set);
    assert_eq!(pool.cpu_sets(), std::slice::from_ref(&set));
    assert_eq!(tasks_see(&pool, &set), replacement);
    assert_eq!(pool.stats().respawns, 1);
}

fn zero_cpus_per_worker_is_a_config_error() {
    let allowed = info::allowed_cpus().unwrap();
    for pinning in [
        Pinning::PerCpu,
        Pinning::None,
        Pinning::Cpus(vec![allowed[0]]),
    ] {
        let err = Pool::builder()
            .cpus_per_worker(0)
            .pinning(pinning)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { what } if what.contains("cpus_per_worker must be at least 1")),
            "{err}"
        );
    }
}

fn extra_workers_wrap_around_the_list() {
    let allowed = info::allowed_cpus().unwrap();
    let pool = Pool::builder()
        .workers(3)
        .cpus_per_worker(2)
        .pinning(Pinning::Cpus(allowed.clone()))
        .build()
        .unwrap();
    // Worker i takes the 2 CPUs from allowed[2 i] on, wrapping around.
    let expected: Vec<Vec<usize>> = (0..3)
        .map(|i| {
            let mut set: Vec<usize> = (0..allowed.len().min(2))
                .map(|k| allowed[(2 * i + k) % allowed.len()])
                .collect();
            set.sort_unstable();
            set
        })
        .collect();
    assert_eq!(pool.cpu_sets(), expected.as_slice());
    for (pid, set) in pool.pids().iter().zip(pool.cpu_sets()) {
        assert_eq!(&info::affinity_of(*pid).unwrap(), set);
    }
    // A list shorter than the sets: each worker gets the whole list.
    let short = Pool::builder()
        .workers(2)
        .cpus_per_worker(4)
        .pinning(Pinning::Cpus(vec![allowed[0]]))
        .build()
        .unwrap();
    assert_eq!(short.cpu_sets(), &[vec![allowed[0]], vec![allowed[0]]]);
    assert_eq!(short.cpus(), &[Some(allowed[0]), Some(allowed[0])]);
}

fn unpinned_workers_see_every_allowed_cpu() {
    let allowed = info::allowed_cpus().unwrap();
    let pool = Pool::builder()
        .cpus_per_worker(2)
        .pinning(Pinning::None)
        .build()
        .unwrap();
    // Only the default count follows `cpus_per_worker`; nobody is pinned.
    assert_eq!(pool.workers(), (allowed.len() / 2).max(1));
    assert!(pool.cpu_sets().iter().all(Vec::is_empty));
    assert!(pool.cpus().iter().all(Option::is_none));
    let seen = seen_by_a_task(&pool);
    assert_eq!(seen.parallelism, parallelism());
    assert!(seen.thread_cpus.iter().all(|cpus| *cpus == allowed));
}

fn the_default_is_one_cpu_per_worker() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let cpu = pool.cpus()[0].expect("pinned");
    assert_eq!(pool.cpu_sets(), &[vec![cpu]]);
    // The documented cost: a task's threads all share that one CPU.
    let seen = seen_by_a_task(&pool);
    assert_eq!(seen.parallelism, 1);
    assert_eq!(seen.thread_cpus, vec![vec![cpu]]);
}

/// A blocking `apply` from a thread that shares a worker's CPU goes to the
/// other, idle worker: sent to the worker beside it, every round trip was
/// two context switches (24 µs on a 2-vCPU VM) instead of two cache-line
/// transfers.
fn a_lone_task_goes_to_a_worker_off_the_callers_cpu() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let cpus: Vec<usize> = pool.cpus().iter().map(|c| c.expect("pinned")).collect();
    if cpus[0] == cpus[1] {
        eprintln!("notice: one allowed CPU; nothing to choose between");
        return;
    }
    for &here in &cpus {
        // A thread of its own, pinned, so the harness's thread keeps its mask.
        let ran_on = std::thread::scope(|s| {
            s.spawn(|| {
                info::pin_current_thread(here).unwrap();
                (0..20)
                    .map(|_| pool.apply(|_: ()| info::current_cpu(), ()).unwrap())
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap()
        });
        assert!(
            ran_on.iter().all(|&cpu| cpu != Some(here)),
            "caller on CPU {here}, tasks ran on {ran_on:?}"
        );
    }
}

fn main() {
    common::run(common::tests![
        two_cpus_per_worker_give_a_task_two_threads,
        a_replacement_gets_the_same_set,
        zero_cpus_per_worker_is_a_config_error,
        extra_workers_wrap_around_the_list,
        unpinned_workers_see_every_allowed_cpu,
        the_default_is_one_cpu_per_worker,
        a_lone_task_goes_to_a_worker_off_the_callers_cpu,
    ]);
}
