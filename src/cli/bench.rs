//! `corepool bench`: the standard workloads, each on corepool, on an
//! in-process thread pool (rayon) and, where it makes sense, sequentially, in
//! the same run, so that ratios mean something on a small, noisy machine.

use corepool::{Error, Pool, SharedArray};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Worker processes (and threads for the baseline). Default: one per allowed CPU.
    #[arg(long)]
    workers: Option<usize>,
    /// Small sizes: the whole suite in well under 20 s.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only these workloads (comma-separated: apply_async,map,latency,cpu_loop,shared_sum).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One measured row.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    workload: &'static str,
    system: &'static str,
    workers: usize,
    items: u64,
    seconds: f64,
    rate: f64,
    unit: &'static str,
}

struct Sizes {
    apply_async: u64,
    map: u64,
    latency: u64,
    cpu_loop: u64,
    shared_sum_bytes: u64,
}

const WORKLOADS: [&str; 5] = ["apply_async", "map", "latency", "cpu_loop", "shared_sum"];

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

pub fn run(args: &BenchArgs) -> Result<(), Error> {
    for w in &args.only {
        if !WORKLOADS.contains(&w.as_str()) {
            return Err(Error::InvalidConfig {
                what: format!(
                    "unknown workload `{w}`: choose from {}",
                    WORKLOADS.join(", ")
                ),
            });
        }
    }
    let workers = match args.workers {
        Some(0) => {
            return Err(Error::InvalidConfig {
                what: "--workers must be at least 1".into(),
            })
        }
        Some(n) => n,
        None => corepool::info::allowed_cpus()?.len().max(1),
    };
    let sizes = if args.quick {
        Sizes {
            apply_async: 200_000,
            map: 4 << 20,
            latency: 5_000,
            cpu_loop: 50_000_000,
            shared_sum_bytes: 64 << 20,
        }
    } else {
        Sizes {
            apply_async: 1_000_000,
            map: 4 << 20,
            latency: 50_000,
            cpu_loop: 500_000_000,
            shared_sum_bytes: 256 << 20,
        }
    };
    let selected: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w))
        .collect();
    let pool = Pool::builder().workers(workers).build()?;
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|e| Error::InvalidConfig {
            what: format!("rayon pool: {e}"),
        })?;
    let bar = ProgressBar::new(selected.len() as u64 * 3);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    // Memory-hungry workloads last: a million live handles leave the heap
    // in a state that slows every later allocation-heavy row. Rows are
    // printed in the canonical order whatever the run order.
    let run_order = ["latency", "cpu_loop", "shared_sum", "map", "apply_async"];
    for workload in run_order.into_iter().filter(|w| selected.contains(w)) {
        bar.set_message(workload);
        let got = match workload {
            "apply_async" => bench_apply_async(&pool, &threads, workers, sizes.apply_async, &bar)?,
            "map" => bench_map(&pool, &threads, workers, sizes.map, &bar)?,
            "latency" => bench_latency(&pool, &threads, workers, sizes.latency, &bar)?,
            "cpu_loop" => bench_cpu_loop(&pool, &threads, workers, sizes.cpu_loop, &bar)?,
            _ => bench_shared_sum(&pool, &threads, workers, sizes.shared_sum_bytes, &bar)?,
        };
        for row in got {
            if args.json {
                bar.suspend(|| println!("{}", serde_json::to_string(&row).unwrap_or_default()));
            }
            rows.push(row);
        }
    }
    bar.finish_and_clear();
    rows.sort_by_key(|r| WORKLOADS.iter().position(|w| *w == r.workload));
    if !args.json {
        print_table(&rows);
    }
    Ok(())
}

fn row(
    workload: &'static str,
    system: &'static str,
    workers: usize,
    items: u64,
    elapsed: Duration,
    unit: &'static str,
) -> Row {
    let seconds = elapsed.as_secs_f64();
    Row {
        workload,
        system,
        workers,
        items,
        seconds,
        rate: items as f64 / seconds.max(1e-12),
        unit,
    }
}

fn bench_apply_async(
    pool: &Pool,
    threads: &rayon::ThreadPool,
    workers: usize,
    n: u64,
    bar: &ProgressBar,
) -> Result<Vec<Row>, Error> {
    // Warm-up.
    for i in 0..1000 {
        pool.apply_async(noop, i)?.get()?;
    }
    let t = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| pool.apply_async(noop, i))
        .collect::<Result<_, _>>()?;
    let mut check = 0u64;
    for h in handles {
        check = check.wrapping_add(h.get()?);
    }
    let corepool = row(
        "apply_async",
        "corepool",
        workers,
        n,
        t.elapsed(),
        "tasks/s",
    );
    assert_eq!(check, (0..n).sum::<u64>());
    bar.inc(1);
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
    let mut check2 = 0u64;
    for rx in receivers {
        check2 = check2.wrapping_add(rx.recv().unwrap_or(0));
    }
    let thread_row = row("apply_async", "threads", workers, n, t.elapsed(), "tasks/s");
    assert_eq!(check, check2);
    bar.inc(2);
    Ok(vec![corepool, thread_row])
}

fn bench_map(
    pool: &Pool,
    threads: &rayon::ThreadPool,
    workers: usize,
    n: u64,
    bar: &ProgressBar,
) -> Result<Vec<Row>, Error> {
    use rayon::prelude::*;
    let input: Vec<u64> = (0..n).collect();
    pool.map(noop, input[..1 << 16].to_vec(), None)?; // warm-up
    let t = Instant::now();
    let out = pool.map(noop, input.iter().copied(), None)?;
    let corepool = row("map", "corepool", workers, n, t.elapsed(), "items/s");
    assert_eq!(out, input);
    bar.inc(1);
    let t = Instant::now();
    let out: Vec<u64> = threads.install(|| input.par_iter().map(|&x| noop(x)).collect());
    let thread_row = row("map", "threads", workers, n, t.elapsed(), "items/s");
    assert_eq!(out, input);
    bar.inc(1);
    let t = Instant::now();
    let out: Vec<u64> = input
        .iter()
        .map(|&x| std::hint::black_box(noop(x)))
        .collect();
    let seq = row("map", "sequential", 1, n, t.elapsed(), "items/s");
    assert_eq!(out, input);
    bar.inc(1);
    Ok(vec![corepool, thread_row, seq])
}

fn median_ns(mut samples: Vec<u64>) -> f64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0) as f64
}

fn bench_latency(
    pool: &Pool,
    threads: &rayon::ThreadPool,
    workers: usize,
    n: u64,
    bar: &ProgressBar,
) -> Result<Vec<Row>, Error> {
    for i in 0..1000 {
        pool.apply(noop, i)?; // warm workers
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let r = pool.apply(noop, i)?;
        samples.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r, i);
    }
    let elapsed = started.elapsed();
    let corepool = Row {
        workload: "latency",
        system: "corepool",
        workers,
        items: n,
        seconds: elapsed.as_secs_f64(),
        rate: median_ns(samples),
        unit: "ns",
    };
    bar.inc(1);
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
        assert_eq!(r, i);
    }
    let thread_row = Row {
        workload: "latency",
        system: "threads",
        workers,
        items: n,
        seconds: started.elapsed().as_secs_f64(),
        rate: median_ns(samples),
        unit: "ns",
    };
    bar.inc(2);
    Ok(vec![corepool, thread_row])
}

fn bench_cpu_loop(
    pool: &Pool,
    threads: &rayon::ThreadPool,
    workers: usize,
    n: u64,
    bar: &ProgressBar,
) -> Result<Vec<Row>, Error> {
    let items = 2 * n;
    // Sequential first: right after the threads row, rayon threads still
    // spinning would steal its core.
    let t = Instant::now();
    assert_eq!(count(n) + count(n), items);
    let seq = row(
        "cpu_loop",
        "sequential",
        1,
        items,
        t.elapsed(),
        "iterations/s",
    );
    bar.inc(1);
    let t = Instant::now();
    let (a, b) = (pool.apply_async(count, n)?, pool.apply_async(count, n)?);
    assert_eq!(a.get()? + b.get()?, items);
    let corepool = row(
        "cpu_loop",
        "corepool",
        workers,
        items,
        t.elapsed(),
        "iterations/s",
    );
    bar.inc(1);
    let t = Instant::now();
    let (a, b) = threads.join(|| count(n), || count(n));
    assert_eq!(a + b, items);
    let thread_row = row(
        "cpu_loop",
        "threads",
        workers,
        items,
        t.elapsed(),
        "iterations/s",
    );
    bar.inc(1);
    Ok(vec![corepool, thread_row, seq])
}

fn bench_shared_sum(
    pool: &Pool,
    threads: &rayon::ThreadPool,
    workers: usize,
    bytes: u64,
    bar: &ProgressBar,
) -> Result<Vec<Row>, Error> {
    use rayon::prelude::*;
    let len = (bytes / 8) as usize;
    let array = SharedArray::<f64>::new(len)?;
    array.update_chunks(0..len, |xs| xs.iter_mut().for_each(|x| *x = 1.0))?;
    let parts = workers * 4;
    let ranges: Vec<(SharedArray<f64>, u64, u64)> = (0..parts)
        .map(|p| {
            (
                array.clone(),
                (len * p / parts) as u64,
                (len * (p + 1) / parts) as u64,
            )
        })
        .collect();
    pool.map(partial_sum, ranges.clone(), Some(1))?; // warm-up: workers map the array once
    let t = Instant::now();
    let total: f64 = pool.map(partial_sum, ranges.clone(), Some(1))?.iter().sum();
    let corepool = row(
        "shared_sum",
        "corepool",
        workers,
        len as u64,
        t.elapsed(),
        "elements/s",
    );
    assert_eq!(total, len as f64);
    bar.inc(1);
    let t = Instant::now();
    let total: f64 = threads.install(|| ranges.par_iter().map(|r| partial_sum(r.clone())).sum());
    let thread_row = row(
        "shared_sum",
        "threads",
        workers,
        len as u64,
        t.elapsed(),
        "elements/s",
    );
    assert_eq!(total, len as f64);
    bar.inc(1);
    let t = Instant::now();
    let total = partial_sum((array.clone(), 0, len as u64));
    let seq = row(
        "shared_sum",
        "sequential",
        1,
        len as u64,
        t.elapsed(),
        "elements/s",
    );
    assert_eq!(total, len as f64);
    bar.inc(1);
    Ok(vec![corepool, thread_row, seq])
}

fn human(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0} "),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<12} {:<11} {:>7} {:>10} {:>9} {:>16} {:>14}",
        "workload", "system", "workers", "items", "seconds", "rate", "vs threads"
    );
    for r in rows {
        let threads = rows
            .iter()
            .find(|t| t.workload == r.workload && t.system == "threads");
        let ratio = match (threads, r.unit) {
            (Some(t), "ns") => format!("{:.2}x faster", t.rate / r.rate.max(1e-9)),
            (Some(t), _) => format!("{:.2}x", r.rate / t.rate.max(1e-9)),
            (None, _) => "-".to_string(),
        };
        let rate = if r.unit == "ns" {
            format!("{:.0} ns median", r.rate)
        } else {
            format!("{}{}", human(r.rate), r.unit)
        };
        println!(
            "{:<12} {:<11} {:>7} {:>10} {:>9.3} {:>16} {:>14}",
            r.workload, r.system, r.workers, r.items, r.seconds, rate, ratio
        );
    }
}
