//! The floor of a cross-rank round trip with the hand-offs corepool-mpi's
//! structure needs, measured with nothing of corepool in it: bare rsmpi
//! messages and flags in shared memory. Run with
//! `mpirun -n 2 --oversubscribe target/release/examples/handoff_floor`
//! (`ROUNDS=n` to change the 20,000 round trips per row).
//!
//! - `ping-pong`: rank 0 and rank 1 send 8 bytes back and forth, one thread
//!   each: the `mpi` row of `corepool-mpi bench`.
//! - `worker`: the same, but rank 1 hands each message to a worker
//!   *process* (forked, a flag in shared memory) and waits for its answer
//!   before replying: the least a rank whose tasks run in worker processes
//!   can do (rank 0's caller making its own MPI calls).
//! - `worker + caller thread`: as `worker`, and rank 0's caller is a thread
//!   of its own that hands each request to the thread making the MPI calls:
//!   corepool-mpi's structure.
//!
//! Every waiter spins 200 times, then yields between checks, as corepool's
//! do. On a machine with a CPU free for each spinning thread the hand-offs
//! cost a cache line each; with fewer CPUs than spinning threads each costs
//! a context switch (docs/scale-out.md).
use mpi::traits::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Spins, then yields, until `word` holds `value` (or `u64::MAX`, the end).
fn wait_for(word: &AtomicU64, value: u64) -> u64 {
    let mut spins = 0u32;
    loop {
        // Acquire: pairs with the Release store that set the word.
        let seen = word.load(Ordering::Acquire);
        if seen == value || seen == u64::MAX {
            return seen;
        }
        if spins < 200 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Two words a cache line apart (request, answer) in a shared anonymous
/// mapping that a forked child shares.
fn shared_words() -> &'static [AtomicU64] {
    // SAFETY: a fresh anonymous shared mapping, zero-filled (a valid
    // `AtomicU64` array), never unmapped, so `'static` holds.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        std::slice::from_raw_parts(p as *const AtomicU64, 16)
    }
}

/// Forks a worker that answers request `k` (word 0) with `k` (word 8),
/// until the request is `u64::MAX`.
fn fork_worker(words: &'static [AtomicU64]) -> libc::pid_t {
    // SAFETY: the child touches only the shared words (no MPI call, no
    // allocation, no lock) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let mut k = 1u64;
        while wait_for(&words[0], k) != u64::MAX {
            // Release: pairs with the Acquire load in the rank's `wait_for`.
            words[8].store(k, Ordering::Release);
            k += 1;
        }
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn median(mut trips: Vec<Duration>) -> Duration {
    trips.sort();
    trips[trips.len() / 2]
}

fn main() {
    let rounds: u64 = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled).expect("MPI");
    let world = universe.world();
    if world.size() != 2 {
        eprintln!("run it on two ranks: mpirun -n 2 --oversubscribe ...");
        std::process::exit(2);
    }
    let rank = world.rank();
    let peer = world.process_at_rank(1 - rank);
    let mut message = [0u64; 1];
    for row in ["ping-pong", "worker", "worker + caller thread"] {
        world.barrier();
        if rank == 1 {
            let worker = (row != "ping-pong").then(shared_words);
            let pid = worker.map(fork_worker);
            for k in 1..=rounds {
                peer.receive_into(&mut message[..]);
                if let Some(words) = worker {
                    // Release: pairs with the worker's Acquire in `wait_for`.
                    words[0].store(k, Ordering::Release);
                    wait_for(&words[8], k);
                }
                peer.send(&message[..]);
            }
            if let (Some(words), Some(pid)) = (worker, pid) {
                words[0].store(u64::MAX, Ordering::Release);
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            continue;
        }
        let trips = if row != "worker + caller thread" {
            (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    peer.send(&message[..]);
                    peer.receive_into(&mut message[..]);
                    t.elapsed()
                })
                .collect()
        } else {
            // The caller is a thread of its own; this (main) thread makes
            // every MPI call (MPI_THREAD_FUNNELED).
            let words = shared_words();
            let caller = std::thread::spawn(move || {
                (1..=rounds)
                    .map(|k| {
                        let t = Instant::now();
                        words[0].store(k, Ordering::Release);
                        wait_for(&words[8], k);
                        t.elapsed()
                    })
                    .collect()
            });
            for k in 1..=rounds {
                wait_for(&words[0], k);
                peer.send(&message[..]);
                peer.receive_into(&mut message[..]);
                words[8].store(k, Ordering::Release);
            }
            caller.join().expect("the caller thread")
        };
        println!(
            "{row:<24} median round trip {:>8.2} µs",
            median(trips).as_secs_f64() * 1e6
        );
    }
}
