//! The workloads on corepool: tasks on a [`Pool`], and `queue` and
//! `pipe_rtt` between this process and a [`Process`] of their own.

use super::bulk::{corepool_bulk, pinning_like};
use super::pair::{
    message, message_sum, on_own_thread, pair_cpus, queue_checksum, round_trips, PING_WARMUP,
    QUEUE_CAPACITY, READY,
};
use super::tasks::{check, count, loop_parts, noop, own_pid, partial_sum, sum_ranges, triangle};
use super::{Inputs, Sample, Sizes, Workload};
use crate::stats::median_u64;
use crate::CliError;
use corepool::{Pinning, Pipe, PipeEnd, Plain, Pool, Process, Queue, StartMethod};
use std::time::{Duration, Instant};

/// One `queue` message: 64 bytes, copied as they are.
type Message = Plain<[u64; 8]>;

/// The producer process of `queue`: READY, then `n` messages. Returns how
/// many it put.
fn produce(arg: (Queue<Message>, u64)) -> u64 {
    let (q, n) = arg;
    if q.put(&Plain(READY)).is_err() {
        return 0;
    }
    for i in 0..n {
        if q.put(&Plain(message(i))).is_err() {
            return i;
        }
    }
    n
}

/// The child of `pipe_rtt`: answers every `v` with `v + 1` until the other
/// end is closed; returns how many it answered.
fn ponger(end: PipeEnd<u64>) -> u64 {
    let mut n = 0;
    while let Ok(v) = end.recv() {
        if end.send(&(v + 1)).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn queue_corepool(n: u64, cpus: (usize, usize)) -> Result<Sample, CliError> {
    let q = Queue::<Message>::with_message_bytes(QUEUE_CAPACITY, 64)?;
    let producer = Process::builder()
        .cpu(cpus.1)
        .start(produce, (q.clone(), n))?;
    let first = q.get_timeout(Duration::from_secs(60));
    check(
        matches!(first, Ok(Plain(m)) if m == READY),
        "queue: the producer did not start",
    )?;
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(message_sum(&q.get()?.0));
    }
    let s = Sample::rate(n, t.elapsed());
    let sent = producer.join()?;
    check(sent == n && sum == queue_checksum(n), "queue checksum")?;
    Ok(s)
}

fn pipe_rtt_corepool(n: u64, cpus: (usize, usize)) -> Result<Sample, CliError> {
    on_own_thread(move || {
        let (mine, theirs) = Pipe::duplex::<u64>()?;
        // The child first, while this thread may still run anywhere.
        let child = Process::builder().cpu(cpus.1).start(ponger, theirs)?;
        corepool::info::pin_current_thread(cpus.0)?;
        let s = round_trips(n, |v| {
            mine.send(&v).ok()?;
            mine.recv().ok()
        });
        drop(mine); // end of stream: the child returns
        let answered = child.join()?;
        let s = s?;
        check(answered == n + PING_WARMUP, "pipe_rtt: answers counted")?;
        Ok(s)
    })
}

/// `n` pools like `pool` built one after another, their workers started as
/// `method` says: the time of each `build()`, which returns once every
/// worker is ready to serve.
fn start_corepool(pool: &Pool, n: u64, method: StartMethod) -> Result<Sample, CliError> {
    let started = Instant::now();
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let fresh = Pool::builder()
            .workers(pool.workers())
            .pinning(pinning_like(pool))
            .start_method(method)
            .build()?;
        times.push(t.elapsed());
        // Not timed: the fresh pool serves, then it is torn down.
        check(fresh.apply(noop, i)? == i, "start: a fresh pool answers")?;
    }
    Ok(Sample::events(times, started.elapsed()))
}

/// `n` times: SIGKILL the one worker of a pool (its pid as a task reported
/// it), then time until a task submitted after the kill is answered by the
/// replacement. The pool retries a task the dying worker may have claimed
/// in the moment between the signal and its death.
fn respawn_corepool(pool: &Pool, n: u64, method: StartMethod) -> Result<Sample, CliError> {
    let pinning = match pool.cpu_sets().first().and_then(|s| s.first()) {
        Some(&cpu) => Pinning::Cpus(vec![cpu]),
        None => Pinning::None,
    };
    let one = Pool::builder()
        .workers(1)
        .pinning(pinning)
        .retries(3)
        .start_method(method)
        .build()?;
    let mut pid = one.apply(own_pid, ())?;
    let started = Instant::now();
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        crate::sys::kill(pid as i32, libc::SIGKILL)
            .map_err(|e| CliError::Wrong(format!("respawn: killing worker {pid}: {e}")))?;
        let replacement = one.apply(own_pid, ())?;
        times.push(t.elapsed());
        check(replacement != pid, "respawn: the replacement served")?;
        pid = replacement;
    }
    Ok(Sample::events(times, started.elapsed()))
}

/// One run of `w` on a corepool pool. `tasks` is the number of cpu_loop tasks.
pub(crate) fn corepool_once(
    w: Workload,
    pool: &Pool,
    sizes: &Sizes,
    inputs: &mut Inputs,
    tasks: usize,
) -> Result<Sample, CliError> {
    let n = sizes.get(w);
    match w {
        Workload::ApplyAsync => {
            let t = Instant::now();
            let handles: Vec<_> = (0..n)
                .map(|i| pool.apply_async(noop, i))
                .collect::<Result<_, _>>()?;
            let mut sum = 0u64;
            for h in handles {
                sum = sum.wrapping_add(h.get()?);
            }
            let s = Sample::rate(n, t.elapsed());
            check(sum == triangle(n), "apply_async sum")?;
            Ok(s)
        }
        Workload::Map => {
            let input = inputs.map_input(n);
            let t = Instant::now();
            let out = pool.map(noop, input.iter().copied())?;
            let s = Sample::rate(n, t.elapsed());
            check(out == input, "map output")?;
            Ok(s)
        }
        Workload::Latency => {
            for i in 0..100 {
                pool.apply(noop, i)?; // wake the workers up
            }
            let started = Instant::now();
            let mut samples = Vec::with_capacity(n as usize);
            for i in 0..n {
                let t = Instant::now();
                let r = pool.apply(noop, i)?;
                samples.push(t.elapsed().as_nanos() as u64);
                check(r == i, "apply result")?;
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
            let handles: Vec<_> = parts
                .iter()
                .map(|&p| pool.apply_async(count, p))
                .collect::<Result<_, _>>()?;
            let mut total = 0;
            for h in handles {
                total += h.get()?;
            }
            let s = Sample::rate(n, t.elapsed());
            check(total == n, "cpu_loop count")?;
            Ok(s)
        }
        Workload::SharedSum => {
            let a = inputs.array(n)?;
            let ranges = sum_ranges(&a, n, pool.workers() * 4);
            let t = Instant::now();
            let total: f64 = pool.chunked(1)?.map(partial_sum, ranges)?.iter().sum();
            let s = Sample::rate(n, t.elapsed());
            check(total == n as f64, "shared_sum total")?;
            Ok(s)
        }
        Workload::Queue => queue_corepool(n, pair_cpus()?),
        Workload::PipeRtt => pipe_rtt_corepool(n, pair_cpus()?),
        // The default start method (the fork server), running before the
        // timed pools are built: a program's pools after its first.
        Workload::Start => {
            ready_fork_server()?;
            start_corepool(pool, n, StartMethod::default())
        }
        Workload::Respawn => {
            ready_fork_server()?;
            respawn_corepool(pool, n, StartMethod::default())
        }
        Workload::Bulk | Workload::BulkShared => corepool_bulk(w, pool, &mut inputs.bulk, n),
    }
}

/// What one run of start or respawn gives besides the default's warm
/// rows: workers exec'd (`StartMethod::Spawn`), and a program's first pool.
pub(crate) struct OtherStartSamples {
    /// Pools built (start) or workers replaced (respawn) by exec.
    pub(crate) spawn: Sample,
    /// start only: the first pool of a program, with the default start
    /// method, the fork server's own start included (it is stopped before,
    /// so every run times one).
    pub(crate) first: Option<Sample>,
}

/// One run of start or respawn (`None` for the other workloads) with the
/// workers exec'd, and for start a program's first pool.
pub(crate) fn corepool_other_starts_once(
    w: Workload,
    pool: &Pool,
    sizes: &Sizes,
) -> Result<Option<OtherStartSamples>, CliError> {
    let n = sizes.get(w);
    match w {
        Workload::Start => {
            let spawn = start_corepool(pool, n, StartMethod::Spawn)?;
            corepool::stop_fork_server();
            let first = start_corepool(pool, 1, StartMethod::default())?;
            // The first pool does not wait for the fork server it starts
            // (its workers are exec'd meanwhile): wait here, so that the
            // next run's default pools are all forked.
            ready_fork_server()?;
            Ok(Some(OtherStartSamples {
                spawn,
                first: Some(first),
            }))
        }
        Workload::Respawn => Ok(Some(OtherStartSamples {
            spawn: respawn_corepool(pool, n, StartMethod::Spawn)?,
            first: None,
        })),
        _ => Ok(None),
    }
}

/// Has the fork server started (a first pool starts it), and waits until it
/// is ready.
fn ready_fork_server() -> Result<(), CliError> {
    if corepool::fork_server_pid().is_none() {
        drop(
            Pool::builder()
                .workers(1)
                .pinning(Pinning::None)
                .start_method(StartMethod::default())
                .build()?,
        );
    }
    corepool::fork_server_pid()
        .map(drop)
        .ok_or_else(|| CliError::Wrong("the fork server did not start".into()))
}
