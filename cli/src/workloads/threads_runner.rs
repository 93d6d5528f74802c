//! The workloads on threads of this process: a rayon pool for the tasks,
//! and crossbeam channels between two threads for `queue` and `pipe_rtt`.
//! The in-process baseline corepool is compared with.

use super::bulk::threads_bulk;
use super::pair::{
    message, message_sum, on_own_thread, pair_cpus, queue_checksum, round_trips, PING_WARMUP,
    QUEUE_CAPACITY, READY,
};
use super::tasks::{check, count, loop_parts, noop, partial_sum, sum_ranges, triangle};
use super::{Inputs, Sample, Sizes, Workload};
use crate::stats::median_u64;
use crate::CliError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn queue_threads(n: u64, cpus: (usize, usize)) -> Result<Sample, CliError> {
    let (tx, rx) = crossbeam_channel::bounded::<[u64; 8]>(QUEUE_CAPACITY);
    let producer = std::thread::spawn(move || {
        let _ = corepool::info::pin_current_thread(cpus.1);
        if tx.send(READY).is_err() {
            return 0;
        }
        for i in 0..n {
            if tx.send(message(i)).is_err() {
                return i;
            }
        }
        n
    });
    check(rx.recv().ok() == Some(READY), "threads queue: no producer")?;
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        let Ok(m) = rx.recv() else { break };
        sum = sum.wrapping_add(message_sum(&m));
    }
    let s = Sample::rate(n, t.elapsed());
    drop(rx);
    let sent = producer.join().unwrap_or(0);
    check(
        sent == n && sum == queue_checksum(n),
        "threads queue checksum",
    )?;
    Ok(s)
}

fn pipe_rtt_threads(n: u64, cpus: (usize, usize)) -> Result<Sample, CliError> {
    on_own_thread(move || {
        let (to_ponger, from_pinger) = crossbeam_channel::bounded::<u64>(64);
        let (to_pinger, from_ponger) = crossbeam_channel::bounded::<u64>(64);
        let ponger = std::thread::spawn(move || {
            let _ = corepool::info::pin_current_thread(cpus.1);
            let mut answered = 0u64;
            while let Ok(v) = from_pinger.recv() {
                if to_pinger.send(v + 1).is_err() {
                    break;
                }
                answered += 1;
            }
            answered
        });
        corepool::info::pin_current_thread(cpus.0)?;
        let s = round_trips(n, |v| {
            to_ponger.send(v).ok()?;
            from_ponger.recv().ok()
        });
        drop(to_ponger);
        let answered = ponger.join().unwrap_or(0);
        let s = s?;
        check(
            answered == n + PING_WARMUP,
            "threads pipe_rtt: answers counted",
        )?;
        Ok(s)
    })
}

/// `n` rayon pools of `threads`' size built one after another: the time
/// until every thread of each has run (a broadcast answered).
fn start_threads(threads: &rayon::ThreadPool, n: u64) -> Result<Sample, CliError> {
    let started = Instant::now();
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let fresh = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.current_num_threads())
            .build()
            .map_err(|e| CliError::Wrong(format!("start: rayon: {e}")))?;
        let ran = fresh.broadcast(|_| 1u64).iter().sum::<u64>();
        times.push(t.elapsed());
        check(
            ran == threads.current_num_threads() as u64,
            "start: every thread ran",
        )?;
    }
    Ok(Sample::events(times, started.elapsed()))
}

/// The fastest in-process way to run `n` no-op tasks: rayon `scope` and
/// `spawn`, each result written into its own slot (no channel, no handle).
/// The floor apply_async is measured against.
pub(crate) fn threads_spawn_once(
    threads: &rayon::ThreadPool,
    sizes: &Sizes,
) -> Result<Sample, CliError> {
    let n = sizes.get(Workload::ApplyAsync);
    let t = Instant::now();
    let out: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    threads.scope(|s| {
        for (i, slot) in out.iter().enumerate() {
            s.spawn(move |_| slot.store(noop(i as u64), Ordering::Relaxed));
        }
    });
    let sum = out
        .iter()
        .fold(0u64, |s, x| s.wrapping_add(x.load(Ordering::Relaxed)));
    let s = Sample::rate(n, t.elapsed());
    check(sum == triangle(n), "threads-spawn sum")?;
    Ok(s)
}

/// One run of `w` on rayon threads.
pub(crate) fn threads_once(
    w: Workload,
    threads: &rayon::ThreadPool,
    sizes: &Sizes,
    inputs: &mut Inputs,
    tasks: usize,
) -> Result<Sample, CliError> {
    use rayon::prelude::*;
    let n = sizes.get(w);
    match w {
        Workload::ApplyAsync => {
            let t = Instant::now();
            let receivers: Vec<_> = (0..n)
                .map(|i| {
                    let (tx, rx) = crossbeam_channel::bounded(1);
                    threads.spawn(move || {
                        let _ = tx.send(noop(i));
                    });
                    rx
                })
                .collect();
            let mut sum = 0u64;
            for rx in receivers {
                sum = sum.wrapping_add(rx.recv().unwrap_or(0));
            }
            let s = Sample::rate(n, t.elapsed());
            check(sum == triangle(n), "threads apply_async sum")?;
            Ok(s)
        }
        Workload::Map => {
            let input = inputs.map_input(n);
            let t = Instant::now();
            let out: Vec<u64> = threads.install(|| input.par_iter().map(|&x| noop(x)).collect());
            let s = Sample::rate(n, t.elapsed());
            check(out == input, "threads map output")?;
            Ok(s)
        }
        Workload::Latency => {
            let started = Instant::now();
            let mut samples = Vec::with_capacity(n as usize);
            for i in 0..n {
                let t = Instant::now();
                let (tx, rx) = crossbeam_channel::bounded(1);
                threads.spawn(move || {
                    let _ = tx.send(noop(i));
                });
                let r = rx.recv().unwrap_or(u64::MAX);
                samples.push(t.elapsed().as_nanos() as u64);
                check(r == i, "threads round trip")?;
            }
            Ok(Sample {
                items: n,
                seconds: started.elapsed().as_secs_f64(),
                value: median_u64(samples),
                events_ms: Vec::new(),
            })
        }
        Workload::CpuLoop => {
            let parts = loop_parts(n, tasks);
            let t = Instant::now();
            let total: u64 = threads.install(|| parts.par_iter().map(|&p| count(p)).sum());
            let s = Sample::rate(n, t.elapsed());
            check(total == n, "threads cpu_loop count")?;
            Ok(s)
        }
        Workload::SharedSum => {
            let a = inputs.array(n)?;
            let ranges = sum_ranges(&a, n, threads.current_num_threads() * 4);
            let t = Instant::now();
            let total: f64 =
                threads.install(|| ranges.par_iter().map(|r| partial_sum(r.clone())).sum());
            let s = Sample::rate(n, t.elapsed());
            check(total == n as f64, "threads shared_sum total")?;
            Ok(s)
        }
        Workload::Queue => queue_threads(n, pair_cpus()?),
        Workload::PipeRtt => pipe_rtt_threads(n, pair_cpus()?),
        Workload::Start => start_threads(threads, n),
        Workload::Respawn => Err(CliError::Wrong(
            "respawn has no threads baseline: threads are never killed and replaced".into(),
        )),
        Workload::Bulk | Workload::BulkShared => threads_bulk(w, threads, &mut inputs.bulk, n),
    }
}
