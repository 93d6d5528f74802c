//! `--vs-python`: asks [`crate::python`] for the baseline on Python's
//! `multiprocessing.Pool` and turns its rows into bench rows.

use super::args::{BenchArgs, Plan};
use super::report::{env_for, Row, PYTHON_PINNING};
use crate::python::{self, Interpreter, Outcome, PyInfo};
use crate::topo::Topology;
use crate::workloads::Workload;
use crate::CliError;
use indicatif::ProgressBar;

pub(super) fn python_request(
    plan: &Plan,
    args: &BenchArgs,
    interpreter: &Interpreter,
    workers: usize,
    cpu_loop_tasks: usize,
) -> python::Request {
    python::Request {
        interpreter: interpreter.clone(),
        workers,
        repeat: plan.repeat,
        quick: args.quick,
        only: plan.selected.iter().map(|w| w.name()).collect(),
        size: args.size,
        cpu_loop_tasks,
        timeout: args.python_timeout(),
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
                // A row timed with a start method of its own says which.
                let method = r.start_method.as_deref().unwrap_or(&info.start_method);
                let py = format!("Python {} ({method})", info.python);
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
                lower_is_better: w.lower_is_better(),
                repeats: r.repeats,
                rate_min: r.rate_min,
                rate_max: r.rate_max,
                seconds_min: r.seconds_min,
                seconds_max: r.seconds_max,
                speedup: None,
                efficiency: None,
                vs_threads: None,
                vs_python: None,
                vs_threads_spawn: None,
                p99: None,
                note,
                env: env_for(topo, PYTHON_PINNING.into()),
            })
        })
        .collect()
}

/// Runs the Python baseline; `Ok(None)` with a warning on stderr when there
/// is no Python (the default `python3` is not installed).
pub(super) fn python_baseline(
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
            bar.suspend(|| crate::output::warn(format_args!("corepool: {msg}")));
            Ok(None)
        }
        Outcome::Rows { info, rows } => {
            let rows = python_rows(rows, topo, &info)?;
            Ok(Some((info, rows)))
        }
    }
}
