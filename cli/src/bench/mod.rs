//! `corepool bench`: the standard workloads, each on corepool, on an
//! in-process thread pool (rayon) and, where it makes sense, sequentially, in
//! the same run, so that ratios mean something on a small, noisy machine.
//! `apply_async` also runs on rayon's `scope` + `spawn` (`threads-spawn`, no
//! result channel: the fastest in-process pool); `start` times building a
//! pool, `respawn` a killed worker's replacement, and `bulk`/`bulk_shared`
//! 8 MiB arguments passed as vectors or through a `SharedArray`.
//! With `--vs-python`, also on Python's `multiprocessing.Pool`
//! (`scripts/bench_mp.py`). Every workload runs once as a warm-up that is not
//! counted, then `--repeat` times; rows report the median, min and max.
//! `--scale` runs 1..N workers instead and reports parallel efficiency;
//! `--plot` draws those curves.
//!
//! `args` reads the command line into a plan, `suite` runs the repeated
//! suite, `scale` the 1..N sweep, `vs_python` adds Python's rows, and
//! `report` prints what they measured.

mod args;
mod report;
mod scale;
mod suite;
mod vs_python;

use args::plan;
use scale::run_scale;
use suite::run_suite;

pub(crate) use args::BenchArgs;

use crate::topo::Placement;
use crate::CliError;
use corepool::Pool;
use indicatif::{ProgressBar, ProgressStyle};

/// Runs the suite, or with `--scale` the sweep.
pub(crate) fn run(args: &BenchArgs) -> Result<(), CliError> {
    let plan = plan(args)?;
    if args.scale {
        run_scale(args, &plan)
    } else {
        run_suite(args, &plan)
    }
}

/// The progress bar both modes draw while they measure.
fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// corepool's pool for one placement.
fn build_pool(p: &Placement) -> Result<Pool, CliError> {
    Ok(Pool::builder()
        .workers(p.workers)
        .pinning(p.pinning.clone())
        .build()?)
}

/// The threads baseline: `n` unpinned rayon threads.
fn rayon_pool(n: usize) -> Result<rayon::ThreadPool, CliError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| CliError::usage(format!("starting {n} rayon threads failed: {e}")))
}
