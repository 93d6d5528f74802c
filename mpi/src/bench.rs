//! The cluster benchmark: each workload on the cluster, on a local pool of
//! as many workers on rank 0, and (for latency and bandwidth) on bare MPI.

use corepool::Pool;
use corepool_mpi::Cluster;
use std::time::Instant;

/// The workloads, by the names `--only` takes.
pub(crate) const WORKLOADS: [&str; 6] = [
    "apply_async",
    "map",
    "cpu_loop",
    "latency",
    "latency_1ms",
    "bandwidth",
];

/// What the command line asked for.
#[derive(Debug, Default)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) json: bool,
    /// Repeats of each row (0: the default, 3, or 1 with `--quick`; the
    /// command line refuses 0).
    pub(crate) repeats: usize,
    /// Run only this workload (for profiling one of them).
    pub(crate) only: Option<String>,
}

impl Options {
    fn runs(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == workload)
    }
}

/// One measured row, in the format of `corepool bench --json`, with the
/// MPI library and thread level it was measured on (so that a saved JSON
/// run says which).
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    workload: &'static str,
    system: &'static str,
    workers: usize,
    ranks: usize,
    items: u64,
    seconds: f64,
    rate: f64,
    unit: &'static str,
    repeats: usize,
    rate_min: f64,
    rate_max: f64,
    note: String,
    mpi: String,
    thread_level: String,
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

/// Waits `micros` µs without using the CPU: a task of a known length.
fn nap(micros: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_micros(micros));
    micros
}

fn byte_len(bytes: Vec<u8>) -> u64 {
    bytes.len() as u64
}

/// Sizes of one run.
struct Sizes {
    tasks: u64,
    items: u64,
    loop_total: u64,
    loop_tasks: u64,
    round_trips: u64,
    big_bytes: usize,
    big_sends: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                tasks: 2_000,
                items: 400_000,
                loop_total: 400_000_000,
                loop_tasks: 16,
                round_trips: 300,
                big_bytes: 4 << 20,
                big_sends: 8,
            }
        } else {
            Self {
                tasks: 20_000,
                items: 4_000_000,
                loop_total: 4_000_000_000,
                loop_tasks: 32,
                round_trips: 3_000,
                big_bytes: 4 << 20,
                big_sends: 40,
            }
        }
    }
}

type Failure = Box<dyn std::error::Error>;

/// Large arguments in flight at once in the bandwidth rows.
const BANDWIDTH_WINDOW: usize = 4;

/// The median of `n` timed round trips of `trip`, as (1, seconds).
fn median_trip(
    n: u64,
    mut trip: impl FnMut() -> Result<(), Failure>,
) -> Result<(u64, f64), Failure> {
    let mut trips = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        trip()?;
        trips.push(t.elapsed());
    }
    trips.sort();
    Ok((1, trips[trips.len() / 2].as_secs_f64()))
}

/// Runs `measure` `repeats` times; each returns (items, seconds).
fn sample(
    repeats: usize,
    mut measure: impl FnMut() -> Result<(u64, f64), Failure>,
) -> Result<Vec<(u64, f64)>, Failure> {
    (0..repeats).map(|_| measure()).collect()
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    local: &'a Pool,
    sizes: Sizes,
    repeats: usize,
    rows: Vec<Row>,
}

impl Ctx<'_> {
    /// Records a row from samples of (items, seconds), rate = items / s
    /// (or, for a latency unit, ns per item).
    fn push(
        &mut self,
        workload: &'static str,
        system: &'static str,
        unit: &'static str,
        samples: &[(u64, f64)],
        note: &str,
    ) {
        let latency = unit == "ns";
        let mut rates: Vec<f64> = samples
            .iter()
            .map(|&(items, secs)| {
                if latency {
                    secs * 1e9 / items as f64
                } else if unit == "MB/s" {
                    items as f64 / secs / 1e6
                } else {
                    items as f64 / secs
                }
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut seconds: Vec<f64> = samples.iter().map(|s| s.1).collect();
        seconds.sort_by(f64::total_cmp);
        let workers = match system {
            "cluster" => self.cluster.workers().iter().sum(),
            "corepool" => self.local.workers(),
            _ => 0,
        };
        self.rows.push(Row {
            workload,
            system,
            workers,
            ranks: self.cluster.ranks(),
            items: samples.first().map_or(0, |s| s.0),
            seconds: seconds[seconds.len() / 2],
            rate: rates[rates.len() / 2],
            unit,
            repeats: samples.len(),
            rate_min: rates[0],
            rate_max: rates[rates.len() - 1],
            note: note.to_string(),
            mpi: corepool_mpi::mpi_library(),
            thread_level: format!("{:?}", self.cluster.threading()),
        });
    }

    fn rate(&self, workload: &str, system: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.workload == workload && r.system == system)
            .map_or(f64::NAN, |r| r.rate)
    }
}

pub(crate) fn run(options: &Options) -> Result<(), Failure> {
    // Every rank's pool takes arguments of the bandwidth row's size.
    let cluster = Cluster::builder().ring_bytes(1 << 24).init()?;
    let total_workers: usize = cluster.workers().iter().sum();
    let local = Pool::builder()
        .workers(total_workers)
        .ring_bytes(1 << 24)
        .build()?;
    let mut ctx = Ctx {
        cluster: &cluster,
        local: &local,
        sizes: Sizes::new(options.quick),
        repeats: if options.repeats > 0 {
            options.repeats
        } else if options.quick {
            1
        } else {
            3
        },
        rows: Vec::new(),
    };
    if cluster.ranks() < 2 {
        eprintln!("corepool-mpi bench: one rank only: run it under `mpirun -n 2` (or more) for cross-rank rows");
    }
    let peer = cluster.ranks() - 1;
    let r = ctx.repeats;

    if options.runs("apply_async") {
        // apply_async: no-op tasks submitted, then all collected.
        let n = ctx.sizes.tasks;
        let s = sample(r, || {
            let t = Instant::now();
            let handles = (0..n)
                .map(|i| cluster.apply_async(noop, i))
                .collect::<corepool::Result<Vec<_>>>()?;
            for h in handles {
                h.get()?;
            }
            Ok((n, t.elapsed().as_secs_f64()))
        })?;
        ctx.push(
            "apply_async",
            "cluster",
            "tasks/s",
            &s,
            "no-op tasks on every rank",
        );
        let s = sample(r, || {
            let t = Instant::now();
            let handles = (0..n)
                .map(|i| local.apply_async(noop, i))
                .collect::<corepool::Result<Vec<_>>>()?;
            for h in handles {
                h.get()?;
            }
            Ok((n, t.elapsed().as_secs_f64()))
        })?;
        ctx.push(
            "apply_async",
            "corepool",
            "tasks/s",
            &s,
            "local pool on rank 0",
        );
    }

    if options.runs("map") {
        // map: a no-op over u64 items, default chunks.
        let n = ctx.sizes.items;
        let s = sample(r, || {
            let t = Instant::now();
            let out = cluster.map(noop, 0..n)?;
            if out.len() as u64 != n || out[n as usize - 1] != n - 1 {
                return Err("map gave a wrong answer".into());
            }
            Ok((n, t.elapsed().as_secs_f64()))
        })?;
        ctx.push(
            "map",
            "cluster",
            "items/s",
            &s,
            "chunks of up to 256 KiB, about 4 per worker",
        );
        let s = sample(r, || {
            let t = Instant::now();
            let out = local.map(noop, 0..n)?;
            if out.len() as u64 != n {
                return Err("map gave a wrong answer".into());
            }
            Ok((n, t.elapsed().as_secs_f64()))
        })?;
        ctx.push("map", "corepool", "items/s", &s, "local pool on rank 0");
    }

    if options.runs("cpu_loop") {
        // cpu_loop: the seed's loop split into tasks.
        let (total, parts) = (ctx.sizes.loop_total, ctx.sizes.loop_tasks);
        let pieces: Vec<u64> = (0..parts)
            .map(|i| total * (i + 1) / parts - total * i / parts)
            .collect();
        // Alternated, cluster then local in each repeat, so that both see the
        // same machine (other load moves the figures between repeats).
        let mut on_cluster = Vec::new();
        let mut on_local = Vec::new();
        for _ in 0..r {
            let t = Instant::now();
            let done: u64 = cluster.chunked(1)?.map(count, pieces.clone())?.iter().sum();
            on_cluster.push((total, t.elapsed().as_secs_f64()));
            let t = Instant::now();
            let local_done: u64 = local.chunked(1)?.map(count, pieces.clone())?.iter().sum();
            on_local.push((total, t.elapsed().as_secs_f64()));
            if done != total || local_done != total {
                return Err("cpu_loop gave a wrong count".into());
            }
        }
        ctx.push(
            "cpu_loop",
            "cluster",
            "iterations/s",
            &on_cluster,
            "one task per piece, dynamically scheduled",
        );
        let s = on_local;
        ctx.push(
            "cpu_loop",
            "corepool",
            "iterations/s",
            &s,
            "local pool on rank 0",
        );
    }

    // latency and bandwidth: each repeat measures the cluster, the local
    // pool and bare MPI one after the other, so that the three see the same
    // machine (other load moves the figures between repeats).
    let n = ctx.sizes.round_trips;
    let (bytes, sends) = (ctx.sizes.big_bytes, ctx.sizes.big_sends);
    let big = vec![7u8; bytes];
    let mut latency: [Vec<(u64, f64)>; 3] = Default::default();
    let mut bandwidth: [Vec<(u64, f64)>; 3] = Default::default();
    let (with_latency, with_bandwidth) = (options.runs("latency"), options.runs("bandwidth"));
    for _ in 0..r {
        if !with_latency {
            break;
        }
        latency[0].push(median_trip(n, || {
            cluster.apply_on_rank(peer, noop, 1)?;
            Ok(())
        })?);
        latency[1].push(median_trip(n, || {
            local.apply(noop, 1)?;
            Ok(())
        })?);
        if peer > 0 {
            let median = cluster.mpi_ping_pong(peer, 8, n.max(1000))?;
            latency[2].push((1, median.as_secs_f64()));
        }
    }
    for _ in 0..r {
        if !with_bandwidth {
            break;
        }
        // The arguments are made before the clock starts, as the bare MPI
        // row's buffer is: the row measures moving data, not making it.
        let args: Vec<Vec<u8>> = (0..sends).map(|_| big.clone()).collect();
        let t = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for arg in args {
            if in_flight.len() == BANDWIDTH_WINDOW {
                let h: corepool_mpi::ClusterResult<u64> = in_flight.pop_front().ok_or("empty")?;
                if h.get()? != bytes as u64 {
                    return Err("bandwidth: wrong length".into());
                }
            }
            in_flight.push_back(cluster.apply_async_on_rank(peer, byte_len, arg)?);
        }
        for h in in_flight {
            if h.get()? != bytes as u64 {
                return Err("bandwidth: wrong length".into());
            }
        }
        bandwidth[0].push((bytes as u64 * sends, t.elapsed().as_secs_f64()));
        let args: Vec<Vec<u8>> = (0..sends).map(|_| big.clone()).collect();
        let t = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for arg in args {
            if in_flight.len() == BANDWIDTH_WINDOW {
                let h: corepool::AsyncResult<u64> = in_flight.pop_front().ok_or("empty")?;
                h.get()?;
            }
            in_flight.push_back(local.apply_async(byte_len, arg)?);
        }
        for h in in_flight {
            h.get()?;
        }
        bandwidth[1].push((bytes as u64 * sends, t.elapsed().as_secs_f64()));
        if peer > 0 {
            let d = cluster.mpi_stream(peer, bytes, sends)?;
            bandwidth[2].push((bytes as u64 * sends, d.as_secs_f64()));
        }
    }
    let [lat_cluster, lat_local, lat_mpi] = latency;
    if with_latency {
        ctx.push(
            "latency",
            "cluster",
            "ns",
            &lat_cluster,
            &format!("apply on rank {peer}, median round trip"),
        );
        ctx.push(
            "latency",
            "corepool",
            "ns",
            &lat_local,
            "local apply, median round trip",
        );
        if peer > 0 {
            ctx.push(
                "latency",
                "mpi",
                "ns",
                &lat_mpi,
                &format!("rsmpi 8-byte ping-pong with rank {peer}, median round trip"),
            );
        }
    }
    // latency_1ms: the round trip of a task that takes 1 ms, which
    // outlasts the MPI threads' spin: what the idle back-off adds to it.
    if options.runs("latency_1ms") {
        let (mut on_cluster, mut on_local) = (Vec::new(), Vec::new());
        for _ in 0..r {
            on_cluster.push(median_trip((n / 10).max(10), || {
                cluster.apply_on_rank(peer, nap, 1000)?;
                Ok(())
            })?);
            on_local.push(median_trip((n / 10).max(10), || {
                local.apply(nap, 1000)?;
                Ok(())
            })?);
        }
        ctx.push(
            "latency_1ms",
            "cluster",
            "ns",
            &on_cluster,
            &format!("apply on rank {peer} of a 1 ms task, median round trip"),
        );
        ctx.push(
            "latency_1ms",
            "corepool",
            "ns",
            &on_local,
            "local apply of a 1 ms task, median round trip",
        );
    }
    let [bw_cluster, bw_local, bw_mpi] = bandwidth;
    let mib = bytes >> 20;
    if with_bandwidth {
        ctx.push(
            "bandwidth",
            "cluster",
            "MB/s",
            &bw_cluster,
            &format!("{mib} MiB arguments to rank {peer}, {BANDWIDTH_WINDOW} in flight"),
        );
        ctx.push(
            "bandwidth",
            "corepool",
            "MB/s",
            &bw_local,
            &format!("the same arguments to a local worker, {BANDWIDTH_WINDOW} in flight"),
        );
        if peer > 0 {
            ctx.push(
                "bandwidth",
                "mpi",
                "MB/s",
                &bw_mpi,
                &format!("rsmpi blocking sends of {mib} MiB to rank {peer}"),
            );
        }
    }

    report(&ctx, options.json)?;
    drop(local);
    drop(cluster);
    Ok(())
}

fn report(ctx: &Ctx<'_>, json: bool) -> Result<(), Failure> {
    if json {
        for row in &ctx.rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!(
            "{:<12} {:<9} {:>7} {:>16} {:<13} note",
            "workload", "system", "workers", "rate", "unit"
        );
        for row in &ctx.rows {
            println!(
                "{:<12} {:<9} {:>7} {:>16.1} {:<13} {}",
                row.workload, row.system, row.workers, row.rate, row.unit, row.note
            );
        }
    }
    let cpu = ctx.rate("cpu_loop", "cluster") / ctx.rate("cpu_loop", "corepool");
    let bound = 2.0 * ctx.rate("latency", "mpi") + ctx.rate("latency", "corepool");
    let lat = ctx.rate("latency", "cluster");
    let bw = ctx.rate("bandwidth", "cluster") / ctx.rate("bandwidth", "mpi");
    let map = ctx.rate("map", "cluster") / ctx.rate("map", "corepool");
    // A row not run (`--only`, or no rank 1 for the MPI rows) makes its
    // figure NaN: say so rather than print a NaN that reads as a failure.
    let or_not_run = |figure: f64, text: String| {
        if figure.is_nan() {
            "not run".to_string()
        } else {
            text
        }
    };
    let text = format!(
        "targets: cpu_loop cluster/local = {}; latency {}; bandwidth cluster/mpi = {}; map cluster/local = {}",
        or_not_run(cpu, format!("{cpu:.3} (>= 0.9)")),
        or_not_run(
            lat / bound,
            format!(
                "{lat:.0} ns vs 2 x mpi + local = {bound:.0} ns ({:.2}x of the bound, <= 1)",
                lat / bound
            )
        ),
        or_not_run(bw, format!("{bw:.3} (>= 0.7)")),
        or_not_run(map, format!("{map:.3}")),
    );
    // Which MPI the figures are of: Open MPI and MPICH differ in transport.
    let mpi = format!(
        "mpi: {}; thread level {:?}",
        corepool_mpi::mpi_library(),
        ctx.cluster.threading()
    );
    if json {
        eprintln!("{text}");
        eprintln!("{mpi}");
    } else {
        println!("{text}");
        println!("{mpi}");
    }
    Ok(())
}
