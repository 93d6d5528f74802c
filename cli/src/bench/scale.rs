//! `--scale`: the throughput workloads on 1, 2, ... N workers, measured in
//! interleaved rounds, with each system's speedup and parallel efficiency,
//! and with `--plot` their curves as SVG.

use super::args::{BenchArgs, Plan};
use super::report::{
    env_for, placement_text, print_header, print_json, print_scale_table, sort_rows, summarize,
    with_ratios, Row, RowEnv, SYSTEM_ORDER, THREADS_PINNING,
};
use super::vs_python::{python_baseline, python_request};
use super::{build_pool, progress, rayon_pool};
use crate::output::outln;
use crate::plot::{self, Curve, Panel, Point};
use crate::topo::Placement;
use crate::workloads::{
    corepool_once, threads_once, Inputs, Sample, Workload, THREADS_BULK_NOTE, WORKLOADS,
};
use crate::CliError;
use corepool::Pool;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// `--plot`'s file, made ready before the sweep so that a path that cannot
/// be written fails at once, not after minutes of measuring: a temporary
/// file in the plot's directory (which proves it exists and is writable),
/// renamed onto the path once the SVG is in it. Until then an older plot at
/// the path is left as it was, and dropping this (a failed run) removes the
/// temporary file, as [`crate::cleanup`] does when a signal ends the run.
struct PlotFile {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
    /// Removes the temporary file if a signal ends the run.
    _on_signal: crate::cleanup::Registered,
}

impl PlotFile {
    fn create(path: &Path) -> Result<Self, CliError> {
        let failed = |reason: String| CliError::Write {
            path: path.display().to_string(),
            reason,
        };
        if path.is_dir() {
            return Err(failed("it is a directory".into()));
        }
        // A symlink is written through, not replaced by the rename: the
        // file it names gets the plot, and the link stays.
        let resolved;
        let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            resolved = std::fs::canonicalize(path).map_err(|e| {
                failed(format!(
                    "it is a symlink to a file that cannot be reached ({e}); give the file's own path"
                ))
            })?;
            resolved.as_path()
        } else {
            path
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            // A device or a socket: renaming onto it would replace it.
            return Err(failed(format!("{} is not a regular file", path.display())));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".corepool-plot-")
            .suffix(".svg.tmp")
            // What `fs::write` would give the file: 0666 less the umask.
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| {
                failed(if dir.is_dir() {
                    // Without the temporary name tempfile adds to it.
                    let why = std::io::Error::from(e.kind());
                    format!("cannot create a file in {}: {why}", dir.display())
                } else {
                    format!("{} is not a directory", dir.display())
                })
            })?;
        Ok(PlotFile {
            path: path.to_path_buf(),
            _on_signal: crate::cleanup::Registered::new(temp.path().to_path_buf()),
            temp,
        })
    }

    fn write(mut self, svg: &str) -> Result<(), CliError> {
        let failed = |reason: String| CliError::Write {
            path: self.path.display().to_string(),
            reason,
        };
        self.temp
            .write_all(svg.as_bytes())
            .and_then(|()| self.temp.flush())
            .map_err(|e| failed(e.to_string()))?;
        let path = self.path.clone();
        self.temp
            .persist(&path)
            .map_err(|e| failed(e.error.to_string()))?;
        Ok(())
    }
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

pub(super) fn run_scale(args: &BenchArgs, plan: &Plan) -> Result<(), CliError> {
    let plot_file = args.plot.as_deref().map(PlotFile::create).transpose()?;
    let counts: Vec<usize> = (1..=plan.max_workers).collect();
    let keep = counts.iter().sum::<usize>() <= KEEP_ALIVE_WORKERS;
    let bar = progress(
        (counts.len() as u64)
            .saturating_mul(plan.selected.len() as u64)
            .saturating_mul((plan.repeat as u64).saturating_add(1)),
    );
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
                (w == Workload::Bulk).then(|| THREADS_BULK_NOTE.into()),
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
    // The plot first: it is a file of its own, kept even if the reader of
    // the table has gone away. A failure to write it is reported after the
    // table, which it does not stop.
    let plotted = plot_file
        .map(|file| file.write(&plot::svg(&scale_panels(&rows), &plot_title(plan))))
        .transpose();
    if args.json {
        print_json(&rows)?;
    } else {
        let placement = args.pinning.place(&plan.topo, Some(plan.max_workers))?;
        print_header(plan, &placement, &args.pinning, py_info.as_ref(), args)?;
        for n in &notes {
            outln!("note: {n}")?;
        }
        print_scale_table(&rows)?;
    }
    plotted?;
    if let Some(path) = &args.plot {
        if !args.json {
            outln!()?;
            outln!("plot: {}", path.display())?;
        }
    }
    match py_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn plot_title(plan: &Plan) -> String {
    format!(
        "corepool bench --scale: {}, {}, {} per point (median; bars: min-max)",
        plan.topo.model,
        crate::output::count(plan.topo.cpus_online, "CPU", "CPUs"),
        crate::output::count(plan.repeat, "run", "runs")
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
