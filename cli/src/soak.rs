//! `corepool soak`: run many checkable tasks while workers get killed, and
//! count what came back. For users who want to see the pool survive on their
//! own machine, and for chaos tests from outside (kill any worker, any time).

use crate::output::outln;
use crate::CliError;
use corepool::{Error, Pool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    /// How many tasks to run.
    #[arg(long, default_value_t = 100_000, allow_negative_numbers = true, value_parser = crate::numbers::at_least_one::<u64>)]
    tasks: u64,
    /// Worker processes. Default: one per allowed CPU.
    /// At most 4096.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::worker_count)]
    workers: Option<usize>,
    /// Kill a random worker with SIGKILL every this many milliseconds (0: only
    /// what others kill).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = crate::numbers::zero_or_more::<u64>)]
    kill_every_ms: u64,
    /// Times a task whose worker died is run again.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = crate::numbers::zero_or_more::<u32>)]
    retries: u32,
    /// Busy-loop iterations per task (so that kills land mid-task).
    #[arg(long, default_value_t = 2_000, allow_negative_numbers = true, value_parser = crate::numbers::zero_or_more::<u64>)]
    work: u64,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// What each task must return for input `i`: a fixed mix of its bits.
fn expected(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn checked_task(arg: (u64, u64)) -> u64 {
    let (i, work) = arg;
    let mut x = i;
    for _ in 0..work {
        x = std::hint::black_box(x.rotate_left(5) ^ 0x5bd1_e995);
    }
    std::hint::black_box(x);
    expected(i)
}

#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    submitted: u64,
    ok: u64,
    wrong: u64,
    worker_died: u64,
    failed: u64,
    lost: u64,
    respawned: u64,
    kills_sent: u64,
    workers: usize,
    seconds: f64,
    rate: f64,
    median_replacement_us: Option<f64>,
}

pub(crate) fn run(args: &SoakArgs) -> Result<bool, CliError> {
    if args.tasks == 0 {
        return Err(CliError::usage("--tasks must be at least 1"));
    }
    let mut builder = Pool::builder().retries(args.retries);
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let pool = builder.build()?;
    let kills = AtomicU64::new(0);
    let mut s = Summary {
        workers: pool.workers(),
        ..Default::default()
    };
    let started = Instant::now();
    // Dropping the sender (when the results are all in) wakes the killer at
    // once, rather than after its current interval: a run ends with its work.
    let (work_done, killer_wakes) = crossbeam_channel::bounded::<()>(0);
    std::thread::scope(|scope| {
        if args.kill_every_ms > 0 {
            let (pool, kills) = (&pool, &kills);
            // An interval too long to add to now waits for the end alone.
            let interval = Duration::from_millis(args.kill_every_ms);
            scope.spawn(move || {
                let mut n: usize = 0;
                // The chaos cadence itself; a disconnect is the end of the work.
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    killer_wakes.recv_timeout(interval)
                {
                    let pids = pool.pids();
                    if let Some(&pid) = pids.get(n % pids.len().max(1)) {
                        // A worker that already died (ESRCH) is fine: the
                        // pool replaces it either way.
                        let _ = crate::sys::kill(pid, libc::SIGKILL);
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                    n = n.wrapping_add(1);
                }
            });
        }
        run_tasks(&pool, args, &mut s);
        // The rate covers the tasks, not the killer's wind-down.
        s.seconds = started.elapsed().as_secs_f64();
        drop(work_done);
    });
    s.rate = s.submitted as f64 / s.seconds.max(1e-9);
    s.kills_sent = kills.load(Ordering::Relaxed);
    let stats = pool.stats();
    s.respawned = stats.respawns;
    s.median_replacement_us = stats.median_replacement().map(|d| d.as_secs_f64() * 1e6);
    // The summary first: whatever happens to the workers now (one may be
    // stopped, SIGSTOP, and never exit by itself), every result is in.
    let passed = s.lost == 0 && s.wrong == 0;
    print_summary(args, &s, passed)?;
    // Nothing is left to wait for, so the workers are killed rather than
    // asked to finish: `close` + `join` would wait for ever on a stopped one.
    pool.terminate();
    pool.join()?;
    Ok(passed)
}

/// Submits the tasks through a window of 4096 in flight and counts what
/// comes back.
fn run_tasks(pool: &Pool, args: &SoakArgs, s: &mut Summary) {
    let window = 4096u64;
    let mut next = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    while next < args.tasks || !in_flight.is_empty() {
        while next < args.tasks && (in_flight.len() as u64) < window {
            match pool.apply_async(checked_task, (next, args.work)) {
                Ok(h) => in_flight.push_back((next, h)),
                Err(_) => s.lost += 1, // could not even submit
            }
            s.submitted += 1;
            next += 1;
        }
        let Some((i, h)) = in_flight.pop_front() else {
            continue;
        };
        // A watchdog per task: a result that never comes is "lost".
        match h.get_timeout(Duration::from_secs(120)) {
            Ok(v) if v == expected(i) => s.ok += 1,
            Ok(_) => s.wrong += 1,
            Err(Error::WorkerDied { .. }) => s.worker_died += 1,
            Err(Error::Timeout) => s.lost += 1,
            Err(_) => s.failed += 1,
        }
    }
}

fn print_summary(args: &SoakArgs, s: &Summary, passed: bool) -> Result<(), CliError> {
    if args.json {
        outln!("{}", serde_json::to_string(&s).unwrap_or_default())?;
    } else {
        outln!("submitted    {}", s.submitted)?;
        outln!("ok           {}", s.ok)?;
        outln!("wrong        {}", s.wrong)?;
        outln!(
            "worker_died  {}  (tasks whose worker died on {})",
            s.worker_died,
            match args.retries {
                0 => "their only run".to_string(),
                r => format!("all {} runs", u64::from(r) + 1),
            }
        )?;
        outln!("failed       {}", s.failed)?;
        outln!("lost         {}", s.lost)?;
        outln!(
            "respawned    {}  (kills sent by this run: {})",
            s.respawned,
            s.kills_sent
        )?;
        if let Some(us) = s.median_replacement_us {
            outln!("replacement  {us:.0} us median, from the parent seeing a death to the new worker ready")?;
        }
        outln!("throughput   {:.0} tasks/s over {:.2} s", s.rate, s.seconds)?;
        outln!(
            "{}",
            if passed {
                "PASS: nothing lost, nothing wrong"
            } else {
                "FAIL"
            }
        )?;
    }
    Ok(())
}
