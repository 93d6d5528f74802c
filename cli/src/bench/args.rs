//! `corepool bench`'s command line, and the plan it makes: which workloads,
//! at what sizes, how often, on how many workers.

use crate::python::Interpreter;
use crate::topo::{Layout, Topology};
use crate::workloads::{Sizes, Workload, WORKLOADS};
use crate::CliError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Worker processes (and threads for the baseline). Default: one per
    /// allowed CPU. With --scale: the largest count.
    /// At most 4096.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::worker_count)]
    pub(super) workers: Option<usize>,
    /// Small sizes: the whole suite in a few seconds.
    #[arg(long)]
    pub(super) quick: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// Run only these workloads (comma-separated:
    /// apply_async,map,latency,cpu_loop,shared_sum,queue,pipe_rtt,start,respawn,bulk,bulk_shared).
    #[arg(long, value_delimiter = ',')]
    pub(super) only: Vec<String>,
    /// Items per run for every selected workload (cpu_loop: iterations in
    /// total; shared_sum: array elements; queue: messages; pipe_rtt: round
    /// trips), instead of the default sizes. Not for start, respawn, bulk and
    /// bulk_shared, whose counts are fixed (--quick makes them smaller):
    /// given with only those, it is refused.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least_one::<u64>)]
    pub(super) size: Option<u64>,
    /// Measured runs of each workload, after one warm-up run that is not
    /// counted. Default 5, or 3 with --quick.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least_one::<usize>)]
    pub(super) repeat: Option<usize>,
    /// Where corepool's workers run: none, per-cpu (default), compact,
    /// scatter, avoid-smt, or a CPU list such as 0,2-3. `corepool pin` compares them.
    #[arg(long, default_value = "per-cpu", value_parser = parse_layout)]
    pub(super) pinning: Layout,
    /// Also run every workload on Python's multiprocessing.Pool
    /// (scripts/bench_mp.py) and print corepool's ratio to it. Needs a Python
    /// 3 interpreter: without one (no python3 installed), the Python rows are
    /// skipped with a warning; an interpreter named with --python or
    /// $COREPOOL_PYTHON that cannot run is an error (exit status 1).
    #[arg(long)]
    pub(super) vs_python: bool,
    /// The Python interpreter for --vs-python. Default: $COREPOOL_PYTHON, else python3.
    #[arg(long, value_name = "PATH", requires = "vs_python")]
    pub(super) python: Option<String>,
    /// Seconds the Python baseline may run before it is killed (at least 1).
    /// Default 900, or 120 with --quick (where it takes a few seconds).
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "vs_python",
        allow_negative_numbers = true,
        value_parser = crate::numbers::at_least_one::<u64>
    )]
    pub(super) python_timeout: Option<u64>,
    /// Run 1, 2, ... N workers (N: --workers, default one per allowed CPU) and
    /// print throughput and parallel efficiency for each count.
    #[arg(long)]
    pub(super) scale: bool,
    /// With --scale: also draw the curves into this SVG file.
    #[arg(long, value_name = "FILE.svg", requires = "scale")]
    pub(super) plot: Option<PathBuf>,
}

impl BenchArgs {
    /// How long the Python baseline may run: `--python-timeout`, else 900
    /// s, or 120 s with `--quick`, whose Python side takes a few seconds:
    /// a stuck Python should not cost a quick run 15 minutes.
    pub(super) fn python_timeout(&self) -> Duration {
        Duration::from_secs(
            self.python_timeout
                .unwrap_or(if self.quick { 120 } else { 900 }),
        )
    }
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    s.parse()
}
/// Everything one `bench` invocation decided.
pub(super) struct Plan {
    pub(super) topo: Topology,
    pub(super) selected: Vec<Workload>,
    pub(super) sizes: Sizes,
    pub(super) repeat: usize,
    pub(super) max_workers: usize,
    pub(super) python: Option<Interpreter>,
}

pub(super) fn plan(args: &BenchArgs) -> Result<Plan, CliError> {
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
                w.not_scaled_because()
            )));
        }
        selected.retain(|w| w.scales());
    }
    let repeat = args.repeat.unwrap_or(if args.quick { 3 } else { 5 });
    if repeat == 0 {
        return Err(CliError::usage("--repeat must be at least 1"));
    }
    if args.python_timeout == Some(0) {
        // Refused rather than read as "no time at all" or "no limit": either
        // would be a guess, and a zero is more likely a slip.
        return Err(CliError::usage(
            "--python-timeout must be at least 1 second: it is how long the Python baseline may run before it is killed",
        ));
    }
    if let Some(n) = args.size {
        // As for any other option that cannot work: refused, not ignored.
        if !selected.iter().any(|w| w.sized_by_option()) {
            let names: Vec<&str> = selected.iter().map(|w| w.name()).collect();
            return Err(CliError::usage(format!(
                "--size {n} sizes nothing here: {} {} fixed counts (--quick makes them smaller); drop --size, or add a workload it sizes to --only",
                names.join(", "),
                if names.len() == 1 { "runs" } else { "run" }
            )));
        }
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
        let named = |path: String, by| Interpreter {
            path,
            named_by: Some(by),
        };
        // An empty value is no value (as `COREPOOL_PYTHON= corepool ...`
        // means), not a path.
        args.python
            .clone()
            .filter(|p| !p.is_empty())
            .map(|p| named(p, "--python"))
            .or_else(|| {
                std::env::var("COREPOOL_PYTHON")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(|p| named(p, "$COREPOOL_PYTHON"))
            })
            .unwrap_or_else(|| Interpreter {
                path: "python3".to_string(),
                named_by: None,
            })
    });
    // The interpreter is checked before anything is measured: a wrong path
    // found after minutes of corepool's rows would waste them.
    let python = match python {
        Some(interp) => match crate::python::probe(&interp, args.python_timeout())? {
            None => Some(interp),
            Some(unavailable) => {
                crate::output::warn(format_args!("corepool: {unavailable}"));
                None
            }
        },
        None => None,
    };
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(n) = args.size {
        if n == 0 {
            return Err(CliError::usage("--size must be at least 1"));
        }
        for w in WORKLOADS.into_iter().filter(|w| w.sized_by_option()) {
            sizes.set(w, n);
        }
    }
    crate::workloads::check_fits(&sizes, &selected, args.size)?;
    Ok(Plan {
        topo,
        selected,
        sizes,
        repeat,
        max_workers,
        python,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(args.iter().copied())).bench
    }

    #[test]
    fn quick_runs_give_python_a_shorter_timeout() {
        assert_eq!(parse(&[]).python_timeout(), Duration::from_secs(900));
        assert_eq!(
            parse(&["--quick"]).python_timeout(),
            Duration::from_secs(120)
        );
        let named = parse(&["--quick", "--vs-python", "--python-timeout", "7"]);
        assert_eq!(named.python_timeout(), Duration::from_secs(7));
    }
}
