//! What `corepool bench` reports: the rows (one per workload, system and
//! worker count, with the machine and the placement), their order and
//! ratios, and the tables and JSON lines they are printed as.

use super::args::{BenchArgs, Plan};
use crate::output::{out, outln};
use crate::python::{self, PyInfo};
use crate::stats::{range_of, Summary};
use crate::topo::{cpu_list, Layout, Placement, Topology};
use crate::workloads::{Sample, Workload, WORKLOADS};
use crate::CliError;

/// The machine and the placement, recorded in every row.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct RowEnv {
    pub(super) cpu_model: String,
    /// Logical CPUs online.
    pub(super) cpus: usize,
    /// Physical cores online.
    pub(super) cores: usize,
    pub(super) packages: usize,
    pub(super) smt: bool,
    /// This process's allowed set.
    pub(super) allowed: String,
    /// Where this row's workers ran.
    pub(super) pinning: String,
    /// The 1-minute load average when the row was made (`/proc/loadavg`):
    /// runs on a loaded machine differ many times over, and this says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) load_1m: Option<f64>,
}

/// The 1-minute load average, if `/proc/loadavg` can be read.
pub(super) fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One reported row: the median of the measured runs, with their range.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Row {
    pub(super) workload: &'static str,
    pub(super) system: String,
    pub(super) workers: usize,
    pub(super) items: u64,
    pub(super) seconds: f64,
    pub(super) rate: f64,
    pub(super) unit: &'static str,
    /// Whether `rate` is a time (latency, pipe_rtt, start, respawn: a
    /// median in `unit`), where smaller is better, as `pin --json` says.
    pub(super) lower_is_better: bool,
    pub(super) repeats: usize,
    pub(super) rate_min: f64,
    pub(super) rate_max: f64,
    pub(super) seconds_min: f64,
    pub(super) seconds_max: f64,
    /// With --scale: rate over this system's rate with one worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) speedup: Option<f64>,
    /// With --scale: speedup divided by the worker count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) efficiency: Option<f64>,
    /// This row's advantage over the threads row of the same workload (and
    /// worker count): rate / threads' rate; for latency, threads' ns / ns.
    /// Above 1 means better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vs_threads: Option<f64>,
    /// The same against the python-mp row, with --vs-python.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vs_python: Option<f64>,
    /// The same against the threads-spawn row (apply_async only): rayon's
    /// fastest way to run tasks, the floor for a task pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vs_threads_spawn: Option<f64>,
    /// For start and respawn: the 99th percentile of every timed event of
    /// every measured run, in `unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) note: Option<String>,
    #[serde(flatten)]
    pub(super) env: RowEnv,
}

pub(super) fn summarize(
    w: Workload,
    system: &str,
    workers: usize,
    samples: &[Sample],
    env: RowEnv,
    note: Option<String>,
) -> Row {
    let rates = Summary::of(&samples.iter().map(|s| s.value).collect::<Vec<_>>());
    let secs = Summary::of(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>());
    let events: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.events_ms.iter().copied())
        .collect();
    Row {
        workload: w.name(),
        system: system.to_string(),
        workers,
        items: samples.first().map_or(0, |s| s.items),
        seconds: secs.median,
        rate: rates.median,
        unit: w.unit(),
        lower_is_better: w.lower_is_better(),
        repeats: samples.len(),
        rate_min: rates.min,
        rate_max: rates.max,
        seconds_min: secs.min,
        seconds_max: secs.max,
        speedup: None,
        efficiency: None,
        vs_threads: None,
        vs_python: None,
        vs_threads_spawn: None,
        p99: percentile(events, 0.99),
        note,
        env,
    }
}

/// The `q` quantile of `values` (nearest rank); `None` when there are none.
pub(super) fn percentile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Whether a smaller value is better in this row (latency, pipe_rtt, start,
/// respawn).
fn lower_is_better(r: &Row) -> bool {
    Workload::parse(r.workload).is_ok_and(Workload::lower_is_better)
}

pub(super) const SYSTEM_ORDER: [&str; 8] = [
    "corepool",
    "corepool-spawn",
    "corepool-first",
    "threads",
    "threads-spawn",
    "sequential",
    "python-mp",
    "python-mp-spawn",
];

pub(super) fn sort_rows(rows: &mut [Row]) {
    rows.sort_by_key(|r| {
        (
            WORKLOADS.iter().position(|w| w.name() == r.workload),
            SYSTEM_ORDER.iter().position(|s| *s == r.system),
            r.workers,
        )
    });
}

pub(super) fn env_for(topo: &Topology, pinning: String) -> RowEnv {
    RowEnv {
        cpu_model: topo.model.clone(),
        cpus: topo.cpus_online,
        cores: topo.cores,
        packages: topo.packages,
        smt: topo.smt,
        allowed: cpu_list(&topo.allowed),
        pinning,
        load_1m: load_1m(),
    }
}

pub(super) fn placement_text(layout: &Layout, p: &Placement) -> String {
    match &p.cpus {
        None => format!("{layout}: unpinned"),
        Some(c) => format!(
            "{layout}: {} {}",
            if c.len() == 1 { "CPU" } else { "CPUs" },
            c.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

pub(super) const THREADS_PINNING: &str = "none (rayon threads, not pinned)";
pub(super) const SEQUENTIAL_PINNING: &str = "none (the calling thread)";
pub(super) const PYTHON_PINNING: &str = "none (multiprocessing does not pin)";

/// One JSON object per row and line.
pub(super) fn print_json(rows: &[Row]) -> Result<(), CliError> {
    for r in rows {
        outln!("{}", serde_json::to_string(r).unwrap_or_default())?;
    }
    Ok(())
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

fn rate_text(r: &Row) -> String {
    if r.unit == "ns" {
        format!("{:.0} ns median", r.rate)
    } else if r.unit == "ms" {
        format!("{:.2} ms median", r.rate)
    } else {
        format!("{}{}", human(r.rate), r.unit)
    }
}

/// How much better `r` is than `base` (above 1: better).
fn advantage(r: &Row, base: &Row) -> f64 {
    if lower_is_better(r) {
        base.rate / r.rate.max(1e-9)
    } else {
        r.rate / base.rate.max(1e-9)
    }
}

/// Fills `vs_threads` and `vs_python`: against the row of the same workload
/// with the same worker count (or, for sequential rows, the suite's only one).
pub(super) fn with_ratios(rows: &mut [Row]) {
    let find = |rows: &[Row], r: &Row, system: &str| {
        rows.iter()
            .filter(|b| b.workload == r.workload && b.system == system)
            .min_by_key(|b| b.workers.abs_diff(r.workers))
            .map(|b| advantage(r, b))
    };
    let ratios: Vec<[Option<f64>; 3]> = rows
        .iter()
        .map(|r| {
            [
                find(rows, r, "threads"),
                find(rows, r, "python-mp"),
                find(rows, r, "threads-spawn"),
            ]
        })
        .collect();
    for (r, [t, p, s]) in rows.iter_mut().zip(ratios) {
        r.vs_threads = t;
        r.vs_python = p;
        r.vs_threads_spawn = s;
    }
}

/// A ratio with two decimals, or two significant digits below 0.01 (a
/// process pool against threads by orders of magnitude).
fn times(x: f64) -> String {
    if x > 0.0 && x < 0.01 {
        let digits = (-x.log10()).ceil() as usize + 1;
        format!("{x:.digits$}x")
    } else {
        format!("{x:.2}x")
    }
}

/// `r` against `base`: `2.00x` (higher is better) or `2.00x faster` for ns;
/// `baseline` for the base itself.
fn ratio(r: &Row, base: Option<&Row>) -> String {
    match base {
        Some(b) if b.system == r.system => "baseline".into(),
        Some(b) if lower_is_better(r) => {
            let x = b.rate / r.rate.max(1e-9);
            if x >= 0.995 {
                format!("{x:.2}x faster")
            } else {
                format!("{:.2}x slower", 1.0 / x.max(1e-12))
            }
        }
        Some(b) => times(r.rate / b.rate.max(1e-9)),
        None => "-".into(),
    }
}

pub(super) fn print_header(
    plan: &Plan,
    placement: &Placement,
    layout: &Layout,
    py: Option<&PyInfo>,
    args: &BenchArgs,
) -> Result<(), CliError> {
    let t = &plan.topo;
    let shape = if t.known {
        format!(
            "{} CPU(s) on {} core(s), {} package(s){}",
            t.cpus_online,
            t.cores,
            t.packages,
            if t.smt { ", SMT" } else { ", no SMT" }
        )
    } else {
        t.shape()
    };
    outln!(
        "machine:  {}; {shape}; allowed set {}{}",
        t.model,
        cpu_list(&t.allowed),
        load_1m().map_or(String::new(), |l| format!("; load {l:.2} (1 min)"))
    )?;
    outln!(
        "corepool: {}, pinning {}{}",
        crate::output::count(placement.workers, "worker process", "worker processes"),
        placement_text(layout, placement),
        placement
            .note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"))
    )?;
    outln!(
        "threads:  a rayon pool of {} in this process",
        crate::output::count(placement.workers, "unpinned thread", "unpinned threads")
    )?;
    if let Some(info) = py {
        outln!(
            "python:   {} {} multiprocessing.Pool({}), start method {}, numpy {}; sizes scaled down, rates per item",
            info.implementation,
            info.python,
            placement.workers,
            info.start_method,
            info.numpy.as_deref().unwrap_or("not installed")
        )?;
        outln!("          script: {}", python::script_shown())?;
    }
    outln!(
        "runs:     {} measured per row after 1 warm-up run (not counted){}; rate = median, range = min-max",
        plan.repeat,
        if args.quick { ", --quick sizes" } else { "" }
    )?;
    outln!()
}

/// The table's column titles, printed before the first row.
pub(super) fn print_table_head(vs_python: bool) -> Result<(), CliError> {
    out!(
        "{:<12} {:<15} {:>7} {:>10} {:>9} {:>20} {:>15} {:>15}",
        "workload",
        "system",
        "workers",
        "items",
        "seconds",
        "rate",
        "range",
        "vs threads"
    )?;
    if vs_python {
        out!(" {:>15}", "vs python")?;
    }
    outln!()
}

/// Rows of the table: one workload's as it is measured, or all of them.
pub(super) fn print_table_rows(rows: &[Row], vs_python: bool) -> Result<(), CliError> {
    for r in rows {
        let find = |system: &str| {
            rows.iter()
                .find(|t| t.workload == r.workload && t.system == system)
        };
        out!(
            "{:<12} {:<15} {:>7} {:>10} {:>9.3} {:>20} {:>15} {:>15}",
            r.workload,
            r.system,
            r.workers,
            r.items,
            r.seconds,
            rate_text(r),
            range_text(r),
            ratio(r, find("threads"))
        )?;
        if vs_python {
            out!(" {:>15}", ratio(r, find("python-mp")))?;
        }
        outln!()?;
    }
    Ok(())
}

/// The notes under the table, from every row.
pub(super) fn print_table_notes(rows: &[Row]) -> Result<(), CliError> {
    let mut notes = Vec::new();
    for r in rows {
        match (r.system.as_str(), r.workload) {
            ("corepool", "apply_async") => {
                if let Some(x) = r.vs_threads_spawn {
                    notes.push(format!("apply_async: corepool runs {x:.2}x the rate of threads-spawn (rayon scope + spawn, no result channel: the fastest in-process pool)"));
                }
            }
            ("corepool", "respawn") => {
                if let Some(p99) = r.p99 {
                    let kills = (r.items as usize).saturating_mul(r.repeats);
                    // Under 100 kills the 99th percentile is the slowest.
                    let tail = if kills < 100 { "slowest" } else { "p99" };
                    notes.push(format!("respawn: median {:.2} ms, {tail} {p99:.2} ms over {kills} kills, from the SIGKILL to a task answered by the replacement", r.rate));
                }
            }
            ("threads", "bulk") => {
                if let Some(n) = &r.note {
                    notes.push(format!("bulk: {n}"));
                }
            }
            ("python-mp-spawn", "start") => notes.push(
                "start: python-mp forks its workers (start method fork), python-mp-spawn starts fresh interpreters (spawn)".into(),
            ),
            _ => {}
        }
    }
    if !notes.is_empty() {
        outln!()?;
        for n in notes {
            outln!("{n}")?;
        }
    }
    if let Some(note) = rows.iter().find_map(|r| {
        (r.system == "python-mp")
            .then_some(r.note.as_ref())
            .flatten()
            .filter(|n| n.contains("pure-Python"))
    }) {
        outln!()?;
        outln!("python-mp shared_sum: {note}")?;
    }
    Ok(())
}

pub(super) fn print_scale_table(rows: &[Row]) -> Result<(), CliError> {
    outln!(
        "{:<12} {:<11} {:>7} {:>20} {:>15} {:>8} {:>10}",
        "workload",
        "system",
        "workers",
        "rate",
        "range",
        "speedup",
        "efficiency"
    )?;
    let mut last = "";
    for r in rows {
        if !last.is_empty() && last != r.workload {
            outln!()?;
        }
        last = r.workload;
        outln!(
            "{:<12} {:<11} {:>7} {:>20} {:>15} {:>8} {:>10}",
            r.workload,
            r.system,
            r.workers,
            rate_text(r),
            range_text(r),
            r.speedup.map_or("-".into(), |s| format!("{s:.2}x")),
            r.efficiency
                .map_or("-".into(), |e| format!("{:.0}%", e * 100.0))
        )?;
    }
    outln!()?;
    outln!("speedup: rate over the same system's rate with 1 worker; efficiency: speedup / workers (100% = linear)")
}
