//! The repeated-runs suite: the Python baseline first (with the machine to
//! itself), then every selected workload on corepool, threads and (where it
//! means something) sequentially, a warm-up run and then `--repeat`
//! measured runs each; each workload's rows are printed as soon as it has
//! been measured, in the order the workloads run.

use super::args::{BenchArgs, Plan};
use super::report::{
    env_for, placement_text, print_header, print_json, print_table_head, print_table_notes,
    print_table_rows, sort_rows, summarize, with_ratios, SEQUENTIAL_PINNING, THREADS_PINNING,
};
use super::vs_python::{python_baseline, python_request};
use super::{build_pool, progress, rayon_pool};
use crate::workloads::{
    corepool_once, corepool_other_starts_once, pair_cpus, pair_pinning, sequential_once,
    threads_once, threads_spawn_once, Inputs, Sample, Sizes, Workload, THREADS_BULK_NOTE,
};
use crate::CliError;
use corepool::Pool;
use indicatif::ProgressBar;

/// Samples of one workload on each local system: a warm-up run, then `repeat`.
struct LocalSamples {
    corepool: Vec<Sample>,
    threads: Vec<Sample>,
    /// apply_async only: rayon scope + spawn, no result channel.
    threads_spawn: Vec<Sample>,
    sequential: Vec<Sample>,
    /// start and respawn with the fork server: while it runs, and (start)
    /// the first pool, its start included.
    spawn: Vec<Sample>,
    first: Vec<Sample>,
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
        threads_spawn: Vec::new(),
        sequential: Vec::new(),
        spawn: Vec::new(),
        first: Vec::new(),
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
        // Right after the default's runs, alternated with them run by run.
        let others = corepool_other_starts_once(w, pool, sizes)?;
        let t = if w.has_threads_baseline() {
            Some(threads_once(w, threads, sizes, inputs, tasks)?)
        } else {
            None
        };
        let spawn = if w == Workload::ApplyAsync {
            Some(threads_spawn_once(threads, sizes)?)
        } else {
            None
        };
        let seq = match seq {
            Some(s) => Some(s),
            None if with_sequential => sequential_once(w, sizes, inputs, tasks).transpose()?,
            None => None,
        };
        if run > 0 {
            out.corepool.push(c);
            out.threads.extend(t);
            out.threads_spawn.extend(spawn);
            out.sequential.extend(seq);
            if let Some(others) = others {
                out.spawn.push(others.spawn);
                out.first.extend(others.first);
            }
        }
        bar.inc(1);
    }
    Ok(out)
}

pub(super) fn run_suite(args: &BenchArgs, plan: &Plan) -> Result<(), CliError> {
    let placement = args.pinning.place(&plan.topo, Some(plan.max_workers))?;
    let workers = placement.workers;
    // Saturating: any --repeat is accepted (a huge one only runs long).
    let bar = progress(
        (plan.selected.len() as u64).saturating_mul((plan.repeat as u64).saturating_add(1)),
    );
    // Python first, with the machine to itself (no workers or threads of
    // ours yet), so that every row can be printed with its ratios as soon
    // as its workload is measured. A baseline that fails is reported after
    // corepool's rows, which are still measured.
    let mut python_rows = Vec::new();
    let mut py_info = None;
    let mut py_failure = None;
    if let Some(interpreter) = &plan.python {
        let req = python_request(plan, args, interpreter, workers, 2);
        match python_baseline(&req, &plan.topo, &bar) {
            Ok(Some((info, py_rows))) => {
                python_rows = py_rows;
                py_info = Some(info);
            }
            Ok(None) => {}
            Err(e) => py_failure = Some(e),
        }
    }
    let pool = build_pool(&placement)?;
    let threads = rayon_pool(workers)?;
    let corepool_env = env_for(&plan.topo, placement_text(&args.pinning, &placement));
    if !args.json {
        bar.suspend(|| -> Result<(), CliError> {
            print_header(plan, &placement, &args.pinning, py_info.as_ref(), args)?;
            print_table_head(plan.python.is_some())
        })?;
    }
    let mut rows = Vec::new();
    let mut inputs = Inputs::default();
    // Memory-hungry workloads last: many live handles leave the heap in a
    // state that slows every later allocation-heavy row. Rows are printed in
    // the canonical order whatever the run order.
    // start first of all: a small parent is what a program starting its pool
    // usually is. The bulk rows last: they move 512 MiB per run.
    let run_order = [
        Workload::Start,
        Workload::Respawn,
        Workload::Latency,
        Workload::PipeRtt,
        Workload::Queue,
        Workload::CpuLoop,
        Workload::SharedSum,
        Workload::Map,
        Workload::ApplyAsync,
        Workload::Bulk,
        Workload::BulkShared,
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
        let (row_workers, corepool_pinning, threads_pinning) = if w == Workload::Respawn {
            // One worker, killed and replaced: on the first worker's place.
            let place = match placement.cpus.as_ref().and_then(|c| c.first()) {
                Some(cpu) => format!("{}: 1 worker on CPU {cpu}", args.pinning),
                None => format!("{}: 1 worker, unpinned", args.pinning),
            };
            (1, env_for(&plan.topo, place), THREADS_PINNING.to_string())
        } else if w.uses_pool() {
            (workers, corepool_env.clone(), THREADS_PINNING.to_string())
        } else {
            let cpus = pair_cpus()?;
            (
                1,
                env_for(&plan.topo, pair_pinning(w, cpus, false)),
                pair_pinning(w, cpus, true),
            )
        };
        let mut got = vec![summarize(
            w,
            "corepool",
            row_workers,
            &s.corepool,
            corepool_pinning.clone(),
            None,
        )];
        if !s.spawn.is_empty() {
            got.push(summarize(
                w,
                "corepool-spawn",
                row_workers,
                &s.spawn,
                corepool_pinning.clone(),
                Some(if w == Workload::Start {
                    "StartMethod::Spawn: each worker exec'd".into()
                } else {
                    "StartMethod::Spawn: the replacement exec'd".into()
                }),
            ));
        }
        if !s.first.is_empty() {
            got.push(summarize(
                w,
                "corepool-first",
                row_workers,
                &s.first,
                corepool_pinning.clone(),
                Some("the default start method, a program's first pool: the fork server's own start included".into()),
            ));
        }
        if !s.threads.is_empty() {
            got.push(summarize(
                w,
                "threads",
                row_workers,
                &s.threads,
                env_for(&plan.topo, threads_pinning.clone()),
                (w == Workload::Bulk).then(|| THREADS_BULK_NOTE.into()),
            ));
        }
        if !s.threads_spawn.is_empty() {
            got.push(summarize(
                w,
                "threads-spawn",
                row_workers,
                &s.threads_spawn,
                env_for(&plan.topo, threads_pinning),
                Some("rayon scope + spawn, each result written to its own slot: no channel, no handle".into()),
            ));
        }
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
        // This workload's rows, printed now (a reader such as `head -1` may
        // have all it wants), with their ratios to threads and Python.
        got.extend(
            python_rows
                .iter()
                .filter(|r| r.workload == w.name())
                .cloned(),
        );
        sort_rows(&mut got);
        with_ratios(&mut got);
        bar.suspend(|| {
            if args.json {
                print_json(&got)
            } else {
                print_table_rows(&got, plan.python.is_some())
            }
        })?;
        rows.extend(got);
        // Free this workload's data before the next one.
        inputs = Inputs::default();
    }
    drop(pool);
    drop(threads);
    bar.finish_and_clear();
    if !args.json {
        sort_rows(&mut rows);
        print_table_notes(&rows)?;
    }
    match py_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
