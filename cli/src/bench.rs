//! `corepool bench`: the standard workloads, each on corepool, on an
//! in-process thread pool (rayon) and, where it makes sense, sequentially, in
//! the same run, so that ratios mean something on a small, noisy machine.
//! With `--vs-python`, also on Python's `multiprocessing.Pool`
//! (`scripts/bench_mp.py`). Every workload runs once as a warm-up that is not
//! counted, then `--repeat` times; rows report the median, min and max.
//! `--scale` runs 1..N workers instead and reports parallel efficiency;
//! `--plot` draws those curves.

use crate::plot::{self, Curve, Panel, Point};
use crate::python::{self, Outcome, PyInfo};
use crate::stats::{median_u64, Summary};
use crate::topo::{cpu_list, Layout, Placement, Topology};
use crate::CliError;
use corepool::{Pipe, PipeEnd, Plain, Pool, Process, Queue, SharedArray};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Worker processes (and threads for the baseline). Default: one per
    /// allowed CPU. With --scale: the largest count.
    #[arg(long)]
    workers: Option<usize>,
    /// Small sizes: the whole suite in a few seconds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only these workloads (comma-separated:
    /// apply_async,map,latency,cpu_loop,shared_sum,queue,pipe_rtt).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Items per run for every selected workload (cpu_loop: iterations in
    /// total; shared_sum: array elements; queue: messages; pipe_rtt: round
    /// trips), instead of the default sizes.
    #[arg(long)]
    size: Option<u64>,
    /// Measured runs of each workload, after one warm-up run that is not
    /// counted. Default 5, or 3 with --quick.
    #[arg(long)]
    repeat: Option<usize>,
    /// Where corepool's workers run: none, per-cpu (default), compact,
    /// scatter, avoid-smt, or a CPU list such as 0,2-3. `corepool pin` compares them.
    #[arg(long, default_value = "per-cpu", value_parser = parse_layout)]
    pinning: Layout,
    /// Also run every workload on Python's multiprocessing.Pool
    /// (scripts/bench_mp.py) and print corepool's ratio to it.
    #[arg(long)]
    vs_python: bool,
    /// The Python interpreter for --vs-python. Default: $COREPOOL_PYTHON, else python3.
    #[arg(long, value_name = "PATH", requires = "vs_python")]
    python: Option<String>,
    /// Seconds the Python baseline may run before it is killed.
    #[arg(
        long,
        default_value_t = 900,
        value_name = "SECONDS",
        requires = "vs_python"
    )]
    python_timeout: u64,
    /// Run 1, 2, ... N workers (N: --workers, default one per allowed CPU) and
    /// print throughput and parallel efficiency for each count.
    #[arg(long)]
    scale: bool,
    /// With --scale: also draw the curves into this SVG file.
    #[arg(long, value_name = "FILE.svg", requires = "scale")]
    plot: Option<PathBuf>,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    s.parse()
}

/// The standard workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    ApplyAsync,
    Map,
    Latency,
    CpuLoop,
    SharedSum,
    Queue,
    PipeRtt,
}

pub const WORKLOADS: [Workload; 7] = [
    Workload::ApplyAsync,
    Workload::Map,
    Workload::Latency,
    Workload::CpuLoop,
    Workload::SharedSum,
    Workload::Queue,
    Workload::PipeRtt,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "apply_async",
            Workload::Map => "map",
            Workload::Latency => "latency",
            Workload::CpuLoop => "cpu_loop",
            Workload::SharedSum => "shared_sum",
            Workload::Queue => "queue",
            Workload::PipeRtt => "pipe_rtt",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "tasks/s",
            Workload::Map => "items/s",
            Workload::Latency => "ns",
            Workload::CpuLoop => "iterations/s",
            Workload::SharedSum => "elements/s",
            Workload::Queue => "messages/s",
            Workload::PipeRtt => "ns",
        }
    }

    /// For latency and pipe_rtt a smaller value is better.
    pub fn lower_is_better(self) -> bool {
        matches!(self, Workload::Latency | Workload::PipeRtt)
    }

    /// Whether it runs on the pool's workers (and so depends on their count
    /// and placement). queue and pipe_rtt run between this process and one
    /// `corepool::Process` of their own.
    pub fn uses_pool(self) -> bool {
        !matches!(self, Workload::Queue | Workload::PipeRtt)
    }

    /// Whether --scale can sweep it: a throughput on the pool's workers.
    pub fn scales(self) -> bool {
        self.uses_pool() && !self.lower_is_better()
    }

    pub fn parse(s: &str) -> Result<Self, CliError> {
        WORKLOADS
            .iter()
            .copied()
            .find(|w| w.name() == s.trim())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "unknown workload `{s}`: choose from {}",
                    WORKLOADS.map(Workload::name).join(", ")
                ))
            })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::ApplyAsync => "no-op tasks submitted with apply_async, then all collected",
            Workload::Map => "map of a no-op over u64 items, default chunksize",
            Workload::Latency => "blocking apply round trips, median",
            Workload::CpuLoop => "the seed's loop x = x + 1, split into tasks",
            Workload::SharedSum => "sum of a shared f64 array, 4 parts per worker",
            Workload::Queue => "64-byte messages from one producer process through a Queue",
            Workload::PipeRtt => "u64 ping-pong with a child process through a duplex Pipe, median",
        }
    }
}

/// Items per run of each workload. `cpu_loop` counts iterations in total.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub apply_async: u64,
    pub map: u64,
    pub latency: u64,
    pub cpu_loop: u64,
    pub shared_sum_elements: u64,
    pub queue: u64,
    pub pipe_rtt: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            apply_async: 500_000,
            map: 4 << 20,
            latency: 50_000,
            cpu_loop: 1_000_000_000,
            shared_sum_elements: 32 << 20, // 256 MiB
            queue: 2_000_000,
            pipe_rtt: 50_000,
        }
    }

    pub fn quick() -> Self {
        Sizes {
            apply_async: 200_000,
            map: 4 << 20,
            latency: 5_000,
            cpu_loop: 100_000_000,
            shared_sum_elements: 8 << 20, // 64 MiB
            queue: 200_000,
            pipe_rtt: 5_000,
        }
    }

    pub fn get(&self, w: Workload) -> u64 {
        match w {
            Workload::ApplyAsync => self.apply_async,
            Workload::Map => self.map,
            Workload::Latency => self.latency,
            Workload::CpuLoop => self.cpu_loop,
            Workload::SharedSum => self.shared_sum_elements,
            Workload::Queue => self.queue,
            Workload::PipeRtt => self.pipe_rtt,
        }
    }

    pub fn set(&mut self, w: Workload, n: u64) {
        match w {
            Workload::ApplyAsync => self.apply_async = n,
            Workload::Map => self.map = n,
            Workload::Latency => self.latency = n,
            Workload::CpuLoop => self.cpu_loop = n,
            Workload::SharedSum => self.shared_sum_elements = n,
            Workload::Queue => self.queue = n,
            Workload::PipeRtt => self.pipe_rtt = n,
        }
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub items: u64,
    pub seconds: f64,
    /// Items per second, or the median round trip in ns for latency.
    pub value: f64,
}

impl Sample {
    fn rate(items: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Sample {
            items,
            seconds,
            value: items as f64 / seconds.max(1e-12),
        }
    }
}

/// Data that several runs share, made once.
#[derive(Default)]
pub struct Inputs {
    map: Option<Vec<u64>>,
    array: Option<SharedArray<f64>>,
}

impl Inputs {
    /// `0..n` as a slice of the largest input made so far.
    fn map_input(&mut self, n: u64) -> &[u64] {
        let n = n as usize;
        if self.map.as_ref().map_or(0, Vec::len) < n {
            self.map = Some((0..n as u64).collect());
        }
        self.map.as_deref().map_or(&[], |m| &m[..n])
    }

    /// An array of at least `len` ones (the largest asked for so far).
    fn array(&mut self, len: u64) -> Result<SharedArray<f64>, CliError> {
        if let Some(a) = &self.array {
            if a.len() >= len as usize {
                return Ok(a.clone());
            }
        }
        self.array = None; // free the old one first
        let a = SharedArray::<f64>::new(len as usize)?;
        a.update_chunks(0..len as usize, |xs| xs.iter_mut().for_each(|x| *x = 1.0))?;
        self.array = Some(a.clone());
        Ok(a)
    }
}

fn noop(x: u64) -> u64 {
    x
}

/// The seed's loop: `x = x + 1`, n times.
fn count(n: u64) -> u64 {
    let mut x = 0u64;
    for _ in 0..n {
        x = std::hint::black_box(x + 1);
    }
    x
}

fn partial_sum(arg: (SharedArray<f64>, u64, u64)) -> f64 {
    let (a, start, end) = arg;
    a.fold_chunks(start as usize..end as usize, 0.0, |s, xs| {
        s + xs.iter().sum::<f64>()
    })
    .unwrap_or(f64::NAN)
}

fn check(ok: bool, what: &str) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::Wrong(what.to_string()))
    }
}

/// 0 + 1 + ... + (n - 1), wrapping as the checked sums do.
fn triangle(n: u64) -> u64 {
    (u128::from(n) * u128::from(n.saturating_sub(1)) / 2) as u64
}

/// `tasks` loop tasks that together count to `total`.
fn loop_parts(total: u64, tasks: usize) -> Vec<u64> {
    let tasks = tasks.max(1) as u64;
    (0..tasks)
        .map(|i| total * (i + 1) / tasks - total * i / tasks)
        .collect()
}

/// `parts` ranges covering the first `len` elements of `a`.
fn sum_ranges(a: &SharedArray<f64>, len: u64, parts: usize) -> Vec<(SharedArray<f64>, u64, u64)> {
    let len = len as usize;
    (0..parts)
        .map(|p| {
            (
                a.clone(),
                (len * p / parts) as u64,
                (len * (p + 1) / parts) as u64,
            )
        })
        .collect()
}

/// One `queue` message: 64 bytes, copied as they are.
type Message = Plain<[u64; 8]>;

/// What the producer puts first, so that the timed part starts with the
/// producer running (not with its start-up).
const READY: [u64; 8] = [u64::MAX; 8];

/// Queue slots, as many as the threads baseline's channel has.
const QUEUE_CAPACITY: usize = 1024;

/// Round trips before the timed ones of `pipe_rtt`.
const PING_WARMUP: u64 = 100;

/// Message `i` of `queue`: its words add up to `36 * i`.
fn message(i: u64) -> [u64; 8] {
    std::array::from_fn(|k| i.wrapping_mul(k as u64 + 1))
}

fn message_sum(m: &[u64; 8]) -> u64 {
    m.iter().fold(0, |s, x| s.wrapping_add(*x))
}

/// The sum of the words of messages `0..n`.
fn queue_checksum(n: u64) -> u64 {
    triangle(n).wrapping_mul(36)
}

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

/// The two CPUs of the two-party workloads: `(parent, child)`, different
/// when at least two are allowed.
pub fn pair_cpus() -> Result<(usize, usize), CliError> {
    let cpus = corepool::info::allowed_cpus()?;
    if cpus.is_empty() {
        return Err(CliError::Wrong("no allowed CPU".into()));
    }
    Ok((cpus[0], cpus[1 % cpus.len()]))
}

/// Where the two parties of `queue` or `pipe_rtt` run, for the rows.
fn pair_pinning(w: Workload, cpus: (usize, usize), threads: bool) -> String {
    let (parent, child) = cpus;
    match (w, threads) {
        (Workload::Queue, false) => {
            format!("producer process on CPU {child}; consumer (this thread) unpinned")
        }
        (Workload::Queue, true) => {
            format!("producer thread on CPU {child}; consumer (this thread) unpinned")
        }
        (_, false) => format!("child process on CPU {child}; parent thread on CPU {parent}"),
        (_, true) => format!("ponger thread on CPU {child}; pinger thread on CPU {parent}"),
    }
}

/// `PING_WARMUP` untimed, then `n` timed round trips of `rt`, which sends
/// its argument and returns the answer (`None`: the peer is gone).
fn round_trips(n: u64, mut rt: impl FnMut(u64) -> Option<u64>) -> Result<Sample, CliError> {
    for i in 0..PING_WARMUP {
        check(rt(i) == Some(i + 1), "pipe_rtt warm-up answer")?;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let r = rt(i);
        samples.push(t.elapsed().as_nanos() as u64);
        check(r == Some(i + 1), "pipe_rtt answer")?;
    }
    Ok(Sample {
        items: n,
        seconds: started.elapsed().as_secs_f64(),
        value: median_u64(samples),
    })
}

/// Runs `f` on a thread of its own, which it may pin: the caller's affinity
/// stays as it was.
fn on_own_thread(f: impl FnOnce() -> Result<Sample, CliError> + Send) -> Result<Sample, CliError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(CliError::Wrong("the measuring thread panicked".into())))
    })
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

/// One run of `w` on a corepool pool. `tasks` is the number of cpu_loop tasks.
pub fn corepool_once(
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
            let out = pool.map(noop, input.iter().copied(), None)?;
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
            let total: f64 = pool.map(partial_sum, ranges, Some(1))?.iter().sum();
            let s = Sample::rate(n, t.elapsed());
            check(total == n as f64, "shared_sum total")?;
            Ok(s)
        }
        Workload::Queue => queue_corepool(n, pair_cpus()?),
        Workload::PipeRtt => pipe_rtt_corepool(n, pair_cpus()?),
    }
}

/// One run of `w` on rayon threads.
fn threads_once(
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
    }
}

/// One sequential run on the calling thread, for the workloads where that
/// is a meaningful baseline.
fn sequential_once(
    w: Workload,
    sizes: &Sizes,
    inputs: &mut Inputs,
    tasks: usize,
) -> Option<Result<Sample, CliError>> {
    let n = sizes.get(w);
    match w {
        Workload::Map => {
            let input = inputs.map_input(n);
            let t = Instant::now();
            let out: Vec<u64> = input
                .iter()
                .map(|&x| std::hint::black_box(noop(x)))
                .collect();
            let s = Sample::rate(n, t.elapsed());
            Some(check(out == input, "sequential map").map(|()| s))
        }
        Workload::CpuLoop => {
            let parts = loop_parts(n, tasks);
            let t = Instant::now();
            let total: u64 = parts.iter().map(|&p| count(p)).sum();
            let s = Sample::rate(n, t.elapsed());
            Some(check(total == n, "sequential cpu_loop").map(|()| s))
        }
        Workload::SharedSum => Some((|| {
            let a = inputs.array(n)?;
            let t = Instant::now();
            let total = partial_sum((a, 0, n));
            let s = Sample::rate(n, t.elapsed());
            check(total == n as f64, "sequential shared_sum")?;
            Ok(s)
        })()),
        Workload::ApplyAsync | Workload::Latency | Workload::Queue | Workload::PipeRtt => None,
    }
}

/// The machine and the placement, recorded in every row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RowEnv {
    pub cpu_model: String,
    /// Logical CPUs online.
    pub cpus: usize,
    /// Physical cores online.
    pub cores: usize,
    pub packages: usize,
    pub smt: bool,
    /// This process's allowed set.
    pub allowed: String,
    /// Where this row's workers ran.
    pub pinning: String,
}

/// One reported row: the median of the measured runs, with their range.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub system: String,
    pub workers: usize,
    pub items: u64,
    pub seconds: f64,
    pub rate: f64,
    pub unit: &'static str,
    pub repeats: usize,
    pub rate_min: f64,
    pub rate_max: f64,
    pub seconds_min: f64,
    pub seconds_max: f64,
    /// With --scale: rate over this system's rate with one worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
    /// With --scale: speedup divided by the worker count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<f64>,
    /// This row's advantage over the threads row of the same workload (and
    /// worker count): rate / threads' rate; for latency, threads' ns / ns.
    /// Above 1 means better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_threads: Option<f64>,
    /// The same against the python-mp row, with --vs-python.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_python: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(flatten)]
    pub env: RowEnv,
}

fn summarize(
    w: Workload,
    system: &str,
    workers: usize,
    samples: &[Sample],
    env: RowEnv,
    note: Option<String>,
) -> Row {
    let rates = Summary::of(&samples.iter().map(|s| s.value).collect::<Vec<_>>());
    let secs = Summary::of(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>());
    Row {
        workload: w.name(),
        system: system.to_string(),
        workers,
        items: samples.first().map_or(0, |s| s.items),
        seconds: secs.median,
        rate: rates.median,
        unit: w.unit(),
        repeats: samples.len(),
        rate_min: rates.min,
        rate_max: rates.max,
        seconds_min: secs.min,
        seconds_max: secs.max,
        speedup: None,
        efficiency: None,
        vs_threads: None,
        vs_python: None,
        note,
        env,
    }
}

const SYSTEM_ORDER: [&str; 4] = ["corepool", "threads", "sequential", "python-mp"];

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by_key(|r| {
        (
            WORKLOADS.iter().position(|w| w.name() == r.workload),
            SYSTEM_ORDER.iter().position(|s| *s == r.system),
            r.workers,
        )
    });
}

/// Everything one `bench` invocation decided.
struct Plan {
    topo: Topology,
    selected: Vec<Workload>,
    sizes: Sizes,
    repeat: usize,
    max_workers: usize,
    python: Option<String>,
}

fn plan(args: &BenchArgs) -> Result<Plan, CliError> {
    let mut selected = Vec::new();
    for name in &args.only {
        let w = Workload::parse(name)?;
        if !selected.contains(&w) {
            selected.push(w);
        }
    }
    if selected.is_empty() {
        selected = WORKLOADS.to_vec();
    }
    selected.sort_by_key(|w| WORKLOADS.iter().position(|x| x == w));
    if args.scale {
        if let Some(w) = selected
            .iter()
            .find(|w| !w.scales() && !args.only.is_empty())
        {
            return Err(CliError::usage(format!(
                "--scale measures throughput on 1..N pool workers, and {} {}: drop it from --only",
                w.name(),
                if w.uses_pool() {
                    "is a single round trip"
                } else {
                    "runs between two processes, not on the pool"
                }
            )));
        }
        selected.retain(|w| w.scales());
    }
    let repeat = args.repeat.unwrap_or(if args.quick { 3 } else { 5 });
    if repeat == 0 {
        return Err(CliError::usage("--repeat must be at least 1"));
    }
    if args.workers == Some(0) {
        return Err(CliError::usage("--workers must be at least 1"));
    }
    if let Some(p) = &args.plot {
        if p.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(CliError::usage(format!(
                "--plot writes SVG: give a file name ending in .svg, not `{}`",
                p.display()
            )));
        }
    }
    let topo = Topology::read()?;
    let max_workers = args.workers.unwrap_or(topo.allowed.len().max(1));
    let python = args.vs_python.then(|| {
        args.python
            .clone()
            .or_else(|| std::env::var("COREPOOL_PYTHON").ok())
            .unwrap_or_else(|| "python3".to_string())
    });
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(n) = args.size {
        if n == 0 {
            return Err(CliError::usage("--size must be at least 1"));
        }
        for w in WORKLOADS {
            sizes.set(w, n);
        }
    }
    Ok(Plan {
        topo,
        selected,
        sizes,
        repeat,
        max_workers,
        python,
    })
}

fn env_for(topo: &Topology, pinning: String) -> RowEnv {
    RowEnv {
        cpu_model: topo.model.clone(),
        cpus: topo.cpus_online,
        cores: topo.cores,
        packages: topo.packages,
        smt: topo.smt,
        allowed: cpu_list(&topo.allowed),
        pinning,
    }
}

fn placement_text(layout: &Layout, p: &Placement) -> String {
    match &p.cpus {
        None => format!("{layout}: unpinned"),
        Some(c) => format!(
            "{layout}: CPUs {}",
            c.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

const THREADS_PINNING: &str = "none (rayon threads, not pinned)";
const SEQUENTIAL_PINNING: &str = "none (the calling thread)";
const PYTHON_PINNING: &str = "none (multiprocessing does not pin)";

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn build_pool(p: &Placement) -> Result<Pool, CliError> {
    Ok(Pool::builder()
        .workers(p.workers)
        .pinning(p.pinning.clone())
        .build()?)
}

fn rayon_pool(n: usize) -> Result<rayon::ThreadPool, CliError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| CliError::usage(format!("starting {n} rayon threads failed: {e}")))
}

/// Samples of one workload on each local system: a warm-up run, then `repeat`.
struct LocalSamples {
    corepool: Vec<Sample>,
    threads: Vec<Sample>,
    sequential: Vec<Sample>,
}

#[allow(clippy::too_many_arguments)]
fn measure_local(
    w: Workload,
    pool: &Pool,
    threads: &rayon::ThreadPool,
    sizes: &Sizes,
    inputs: &mut Inputs,
    tasks: usize,
    repeat: usize,
    with_sequential: bool,
    bar: &ProgressBar,
) -> Result<LocalSamples, CliError> {
    let mut out = LocalSamples {
        corepool: Vec::new(),
        threads: Vec::new(),
        sequential: Vec::new(),
    };
    for run in 0..=repeat {
        bar.set_message(if run == 0 {
            format!("{} warm-up", w.name())
        } else {
            format!("{} run {run}/{repeat}", w.name())
        });
        // cpu_loop: sequential first, so that rayon threads still spinning
        // after their run do not steal its core.
        let seq = if with_sequential && w == Workload::CpuLoop {
            sequential_once(w, sizes, inputs, tasks).transpose()?
        } else {
            None
        };
        let c = corepool_once(w, pool, sizes, inputs, tasks)?;
        let t = threads_once(w, threads, sizes, inputs, tasks)?;
        let seq = match seq {
            Some(s) => Some(s),
            None if with_sequential => sequential_once(w, sizes, inputs, tasks).transpose()?,
            None => None,
        };
        if run > 0 {
            out.corepool.push(c);
            out.threads.push(t);
            out.sequential.extend(seq);
        }
        bar.inc(1);
    }
    Ok(out)
}

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let plan = plan(args)?;
    if args.scale {
        run_scale(args, &plan)
    } else {
        run_suite(args, &plan)
    }
}

fn python_request(
    plan: &Plan,
    args: &BenchArgs,
    interpreter: &str,
    workers: usize,
    cpu_loop_tasks: usize,
) -> python::Request {
    python::Request {
        interpreter: interpreter.to_string(),
        workers,
        repeat: plan.repeat,
        quick: args.quick,
        only: plan.selected.iter().map(|w| w.name()).collect(),
        size: args.size,
        cpu_loop_tasks,
        timeout: Duration::from_secs(args.python_timeout.max(1)),
    }
}

fn python_rows(
    rows: Vec<python::PyRow>,
    topo: &Topology,
    info: &PyInfo,
) -> Result<Vec<Row>, CliError> {
    rows.into_iter()
        .map(|r| {
            let w = Workload::parse(&r.workload)
                .map_err(|_| CliError::Python(format!("unknown workload `{}`", r.workload)))?;
            if r.unit != w.unit() {
                return Err(CliError::Python(format!(
                    "{} reported in `{}`, expected `{}`",
                    r.workload,
                    r.unit,
                    w.unit()
                )));
            }
            let mut note = r.note;
            if !info.python.is_empty() {
                let py = format!("Python {} ({})", info.python, info.start_method);
                note = Some(match note {
                    Some(n) => format!("{py}; {n}"),
                    None => py,
                });
            }
            Ok(Row {
                workload: w.name(),
                system: r.system,
                workers: r.workers,
                items: r.items,
                seconds: r.seconds,
                rate: r.rate,
                unit: w.unit(),
                repeats: r.repeats,
                rate_min: r.rate_min,
                rate_max: r.rate_max,
                seconds_min: r.seconds_min,
                seconds_max: r.seconds_max,
                speedup: None,
                efficiency: None,
                vs_threads: None,
                vs_python: None,
                note,
                env: env_for(topo, PYTHON_PINNING.into()),
            })
        })
        .collect()
}

/// Runs the Python baseline; `Ok(None)` with a printed message when there is
/// no interpreter.
fn python_baseline(
    req: &python::Request,
    topo: &Topology,
    bar: &ProgressBar,
) -> Result<Option<(PyInfo, Vec<Row>)>, CliError> {
    bar.set_message(format!(
        "python-mp, {} workers (Python is slow)",
        req.workers
    ));
    match python::run(req)? {
        Outcome::Unavailable(msg) => {
            bar.suspend(|| eprintln!("corepool: {msg}"));
            Ok(None)
        }
        Outcome::Rows { info, rows } => {
            let rows = python_rows(rows, topo, &info)?;
            Ok(Some((info, rows)))
        }
    }
}

fn run_suite(args: &BenchArgs, plan: &Plan) -> Result<(), CliError> {
    let placement = args.pinning.place(&plan.topo, Some(plan.max_workers))?;
    let workers = placement.workers;
    let pool = build_pool(&placement)?;
    let threads = rayon_pool(workers)?;
    let corepool_env = env_for(&plan.topo, placement_text(&args.pinning, &placement));
    let bar = progress(plan.selected.len() as u64 * (plan.repeat as u64 + 1));
    let mut rows = Vec::new();
    let mut inputs = Inputs::default();
    // Memory-hungry workloads last: many live handles leave the heap in a
    // state that slows every later allocation-heavy row. Rows are printed in
    // the canonical order whatever the run order.
    let run_order = [
        Workload::Latency,
        Workload::PipeRtt,
        Workload::Queue,
        Workload::CpuLoop,
        Workload::SharedSum,
        Workload::Map,
        Workload::ApplyAsync,
    ];
    for w in run_order.into_iter().filter(|w| plan.selected.contains(w)) {
        let with_sequential = matches!(w, Workload::Map | Workload::CpuLoop | Workload::SharedSum);
        // The seed's cpu_loop is two tasks.
        let s = measure_local(
            w,
            &pool,
            &threads,
            &plan.sizes,
            &mut inputs,
            2,
            plan.repeat,
            with_sequential,
            &bar,
        )?;
        // queue and pipe_rtt: two parties, one process (or thread) besides
        // this one, not the pool.
        let (row_workers, corepool_pinning, threads_pinning) = if w.uses_pool() {
            (workers, corepool_env.clone(), THREADS_PINNING.to_string())
        } else {
            let cpus = pair_cpus()?;
            (
                1,
                env_for(&plan.topo, pair_pinning(w, cpus, false)),
                pair_pinning(w, cpus, true),
            )
        };
        let mut got = vec![
            summarize(
                w,
                "corepool",
                row_workers,
                &s.corepool,
                corepool_pinning,
                None,
            ),
            summarize(
                w,
                "threads",
                row_workers,
                &s.threads,
                env_for(&plan.topo, threads_pinning),
                None,
            ),
        ];
        if !s.sequential.is_empty() {
            got.push(summarize(
                w,
                "sequential",
                1,
                &s.sequential,
                env_for(&plan.topo, SEQUENTIAL_PINNING.into()),
                None,
            ));
        }
        rows.extend(got);
        // Free this workload's data before the next one.
        inputs = Inputs::default();
    }
    // Python gets the machine to itself: stop our workers and threads first.
    drop(pool);
    drop(threads);
    let mut py_info = None;
    let mut py_failure = None;
    if let Some(interpreter) = &plan.python {
        let req = python_request(plan, args, interpreter, workers, 2);
        match python_baseline(&req, &plan.topo, &bar) {
            Ok(Some((info, py_rows))) => {
                rows.extend(py_rows);
                py_info = Some(info);
            }
            Ok(None) => {}
            Err(e) => py_failure = Some(e),
        }
    }
    bar.finish_and_clear();
    sort_rows(&mut rows);
    with_ratios(&mut rows);
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        print_header(plan, &placement, &args.pinning, py_info.as_ref(), args);
        print_table(&rows, plan.python.is_some());
    }
    match py_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn human(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0} "),
    }
}

/// `min-max`, in the unit of the median.
fn range_text(r: &Row) -> String {
    if r.repeats < 2 {
        return "-".into();
    }
    range_of(r.rate_min, r.rate_max, r.rate, r.unit)
}

/// `1.17-1.68M` (in the magnitude of `median`), or `611-700` for ns.
pub fn range_of(min: f64, max: f64, median: f64, unit: &str) -> String {
    if unit == "ns" {
        return format!("{min:.0}-{max:.0}");
    }
    let (div, suffix) = match median {
        x if x >= 1e9 => (1e9, "G"),
        x if x >= 1e6 => (1e6, "M"),
        x if x >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let digits = if div >= 1e6 { 2 } else { 0 };
    format!("{:.*}-{:.*}{suffix}", digits, min / div, digits, max / div)
}

fn rate_text(r: &Row) -> String {
    if r.unit == "ns" {
        format!("{:.0} ns median", r.rate)
    } else {
        format!("{}{}", human(r.rate), r.unit)
    }
}

/// How much better `r` is than `base` (above 1: better).
fn advantage(r: &Row, base: &Row) -> f64 {
    if r.unit == "ns" {
        base.rate / r.rate.max(1e-9)
    } else {
        r.rate / base.rate.max(1e-9)
    }
}

/// Fills `vs_threads` and `vs_python`: against the row of the same workload
/// with the same worker count (or, for sequential rows, the suite's only one).
fn with_ratios(rows: &mut [Row]) {
    let find = |rows: &[Row], r: &Row, system: &str| {
        rows.iter()
            .filter(|b| b.workload == r.workload && b.system == system)
            .min_by_key(|b| b.workers.abs_diff(r.workers))
            .map(|b| advantage(r, b))
    };
    let ratios: Vec<(Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| (find(rows, r, "threads"), find(rows, r, "python-mp")))
        .collect();
    for (r, (t, p)) in rows.iter_mut().zip(ratios) {
        r.vs_threads = t;
        r.vs_python = p;
    }
}

/// `r` against `base`: `2.00x` (higher is better) or `2.00x faster` for ns.
fn ratio(r: &Row, base: Option<&Row>) -> String {
    match base {
        Some(b) if r.unit == "ns" => {
            let x = b.rate / r.rate.max(1e-9);
            if x >= 0.995 {
                format!("{x:.2}x faster")
            } else {
                format!("{:.2}x slower", 1.0 / x.max(1e-12))
            }
        }
        Some(b) => format!("{:.2}x", r.rate / b.rate.max(1e-9)),
        None => "-".into(),
    }
}

fn print_header(
    plan: &Plan,
    placement: &Placement,
    layout: &Layout,
    py: Option<&PyInfo>,
    args: &BenchArgs,
) {
    let t = &plan.topo;
    println!(
        "machine:  {}; {} CPU(s) on {} core(s), {} package(s){}; allowed set {}",
        t.model,
        t.cpus_online,
        t.cores,
        t.packages,
        if t.smt { ", SMT" } else { ", no SMT" },
        cpu_list(&t.allowed)
    );
    println!(
        "corepool: {} worker processes, pinning {}{}",
        placement.workers,
        placement_text(layout, placement),
        placement
            .note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"))
    );
    println!(
        "threads:  a rayon pool of {} unpinned threads in this process",
        placement.workers
    );
    if let Some(info) = py {
        println!(
            "python:   {} {} multiprocessing.Pool({}), start method {}, numpy {}; sizes scaled down, rates per item",
            info.implementation,
            info.python,
            placement.workers,
            info.start_method,
            info.numpy.as_deref().unwrap_or("not installed")
        );
        println!("          script: {}", python::script_shown());
    }
    println!(
        "runs:     {} measured per row after 1 warm-up run (not counted){}; rate = median, range = min-max",
        plan.repeat,
        if args.quick { ", --quick sizes" } else { "" }
    );
    println!();
}

fn print_table(rows: &[Row], vs_python: bool) {
    print!(
        "{:<12} {:<11} {:>7} {:>10} {:>9} {:>20} {:>15} {:>13}",
        "workload", "system", "workers", "items", "seconds", "rate", "range", "vs threads"
    );
    if vs_python {
        print!(" {:>13}", "vs python");
    }
    println!();
    for r in rows {
        let find = |system: &str| {
            rows.iter()
                .find(|t| t.workload == r.workload && t.system == system)
        };
        print!(
            "{:<12} {:<11} {:>7} {:>10} {:>9.3} {:>20} {:>15} {:>13}",
            r.workload,
            r.system,
            r.workers,
            r.items,
            r.seconds,
            rate_text(r),
            range_text(r),
            ratio(r, find("threads"))
        );
        if vs_python {
            print!(" {:>13}", ratio(r, find("python-mp")));
        }
        println!();
    }
    if let Some(note) = rows.iter().find_map(|r| {
        (r.system == "python-mp")
            .then_some(r.note.as_ref())
            .flatten()
            .filter(|n| n.contains("pure-Python"))
    }) {
        println!();
        println!("python-mp shared_sum: {note}");
    }
}

// ---------------------------------------------------------------- --scale

fn with_scaling(mut rows: Vec<Row>) -> Vec<Row> {
    let base: Vec<(String, &'static str, f64)> = rows
        .iter()
        .filter(|r| r.workers == 1)
        .map(|r| (r.system.clone(), r.workload, r.rate))
        .collect();
    for r in &mut rows {
        if let Some((_, _, one)) = base
            .iter()
            .find(|(s, w, _)| *s == r.system && *w == r.workload)
        {
            let speedup = r.rate / one.max(1e-12);
            r.speedup = Some(speedup);
            r.efficiency = Some(speedup / r.workers as f64);
        }
    }
    rows
}

/// One worker count of a --scale run.
struct ScaleSlot {
    k: usize,
    placement: Placement,
    env: RowEnv,
    live: Option<(Pool, rayon::ThreadPool)>,
    corepool: Vec<Sample>,
    threads: Vec<Sample>,
}

/// Pools for every worker count stay alive through the run when they hold
/// at most this many workers in total; otherwise each measurement builds a
/// fresh pool and warms it up first.
const KEEP_ALIVE_WORKERS: usize = 64;

fn run_scale(args: &BenchArgs, plan: &Plan) -> Result<(), CliError> {
    let counts: Vec<usize> = (1..=plan.max_workers).collect();
    let keep = counts.iter().sum::<usize>() <= KEEP_ALIVE_WORKERS;
    let bar = progress(counts.len() as u64 * plan.selected.len() as u64 * (plan.repeat as u64 + 1));
    let mut rows = Vec::new();
    let mut inputs = Inputs::default();
    let mut notes = Vec::new();
    let mut slots = Vec::new();
    for &k in &counts {
        let placement = args.pinning.place(&plan.topo, Some(k))?;
        if let Some(n) = &placement.note {
            notes.push(format!("{k} workers: {n}"));
        }
        let env = env_for(&plan.topo, placement_text(&args.pinning, &placement));
        slots.push(ScaleSlot {
            k,
            placement,
            env,
            live: None,
            corepool: Vec::new(),
            threads: Vec::new(),
        });
    }
    // Worker counts are interleaved: every round measures each count once,
    // so that a drift of the machine during the run hits all counts alike.
    // Round 0 is a warm-up and is not counted.
    for &w in &plan.selected {
        for round in 0..=plan.repeat {
            for slot in &mut slots {
                bar.set_message(format!(
                    "{} {} workers, {}",
                    w.name(),
                    slot.k,
                    if round == 0 {
                        "warm-up".to_string()
                    } else {
                        format!("run {round}/{}", plan.repeat)
                    }
                ));
                let fresh = slot.live.is_none();
                if fresh {
                    slot.live = Some((build_pool(&slot.placement)?, rayon_pool(slot.k)?));
                }
                if let Some((pool, threads)) = &slot.live {
                    if fresh && round > 0 {
                        corepool_once(w, pool, &plan.sizes, &mut inputs, slot.k)?;
                        threads_once(w, threads, &plan.sizes, &mut inputs, slot.k)?;
                    }
                    let c = corepool_once(w, pool, &plan.sizes, &mut inputs, slot.k)?;
                    let t = threads_once(w, threads, &plan.sizes, &mut inputs, slot.k)?;
                    if round > 0 {
                        slot.corepool.push(c);
                        slot.threads.push(t);
                    }
                }
                if !keep {
                    slot.live = None;
                }
                bar.inc(1);
            }
        }
        for slot in &mut slots {
            rows.push(summarize(
                w,
                "corepool",
                slot.placement.workers,
                &slot.corepool,
                slot.env.clone(),
                None,
            ));
            rows.push(summarize(
                w,
                "threads",
                slot.k,
                &slot.threads,
                env_for(&plan.topo, THREADS_PINNING.into()),
                None,
            ));
            slot.corepool.clear();
            slot.threads.clear();
        }
        inputs = Inputs::default();
    }
    drop(slots);
    drop(inputs);
    let mut py_failure = None;
    let mut py_info = None;
    if let Some(interpreter) = &plan.python {
        for &k in &counts {
            let req = python_request(plan, args, interpreter, k, k);
            match python_baseline(&req, &plan.topo, &bar) {
                Ok(Some((info, py_rows))) => {
                    rows.extend(py_rows);
                    py_info = Some(info);
                }
                Ok(None) => break,
                Err(e) => {
                    py_failure = Some(e);
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    let mut rows = with_scaling(rows);
    sort_rows(&mut rows);
    with_ratios(&mut rows);
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        let placement = args.pinning.place(&plan.topo, Some(plan.max_workers))?;
        print_header(plan, &placement, &args.pinning, py_info.as_ref(), args);
        for n in &notes {
            println!("note: {n}");
        }
        print_scale_table(&rows);
    }
    if let Some(path) = &args.plot {
        let svg = plot::svg(&scale_panels(&rows), &plot_title(plan));
        std::fs::write(path, svg).map_err(|e| CliError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if !args.json {
            println!();
            println!("plot: {}", path.display());
        }
    }
    match py_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn plot_title(plan: &Plan) -> String {
    format!(
        "corepool bench --scale: {}, {} CPUs, {} runs per point (median; bars: min-max)",
        plan.topo.model, plan.topo.cpus_online, plan.repeat
    )
}

fn scale_panels(rows: &[Row]) -> Vec<Panel> {
    WORKLOADS
        .iter()
        .filter(|w| rows.iter().any(|r| r.workload == w.name()))
        .map(|w| {
            let curves = SYSTEM_ORDER
                .iter()
                .filter_map(|system| {
                    let points: Vec<Point> = rows
                        .iter()
                        .filter(|r| r.workload == w.name() && r.system == *system)
                        .map(|r| Point {
                            x: r.workers as f64,
                            y: r.rate,
                            lo: r.rate_min,
                            hi: r.rate_max,
                        })
                        .collect();
                    (!points.is_empty()).then(|| Curve {
                        label: system.to_string(),
                        points,
                    })
                })
                .collect();
            Panel {
                title: w.name().to_string(),
                unit: w.unit().to_string(),
                curves,
            }
        })
        .collect()
}

fn print_scale_table(rows: &[Row]) {
    println!(
        "{:<12} {:<11} {:>7} {:>20} {:>15} {:>8} {:>10}",
        "workload", "system", "workers", "rate", "range", "speedup", "efficiency"
    );
    let mut last = "";
    for r in rows {
        if !last.is_empty() && last != r.workload {
            println!();
        }
        last = r.workload;
        println!(
            "{:<12} {:<11} {:>7} {:>20} {:>15} {:>8} {:>10}",
            r.workload,
            r.system,
            r.workers,
            rate_text(r),
            range_text(r),
            r.speedup.map_or("-".into(), |s| format!("{s:.2}x")),
            r.efficiency
                .map_or("-".into(), |e| format!("{:.0}%", e * 100.0))
        );
    }
    println!();
    println!("speedup: rate over the same system's rate with 1 worker; efficiency: speedup / workers (100% = linear)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_numbers() {
        assert_eq!(triangle(0), 0);
        assert_eq!(triangle(5), 10);
        assert_eq!(
            triangle(1 << 33),
            ((1u128 << 33) * ((1u128 << 33) - 1) / 2) as u64
        );
    }

    #[test]
    fn loop_parts_add_up() {
        assert_eq!(loop_parts(10, 3).iter().sum::<u64>(), 10);
        assert_eq!(loop_parts(10, 3).len(), 3);
        assert_eq!(loop_parts(7, 0), vec![7]);
    }

    #[test]
    fn workloads_parse_by_name() {
        assert_eq!(Workload::parse("map").unwrap(), Workload::Map);
        let err = Workload::parse("nope").unwrap_err().to_string();
        assert!(err.contains("apply_async"), "{err}");
    }
}
