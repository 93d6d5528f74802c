//! `corepool pin`: the topology, then a sweep of pinning layouts on one
//! workload, and the layout to use with its measured margin.
//!
//! Layouts are measured in interleaved rounds (round r runs every layout once,
//! each on a freshly built pool that gets a short warm-up of its own), so a
//! drift of the machine during the sweep hits every layout alike. Round 0 is
//! a warm-up and is not counted.
//!
//! `recommend` judges the runs and `report` prints the verdict.

mod recommend;
mod report;

use crate::output::outln;
use crate::topo::{print_topology, Layout, Placement, Topology};
use crate::workloads::{corepool_once, Inputs, Sample, Sizes, Workload};
use crate::CliError;
use corepool::Pool;
use indicatif::{ProgressBar, ProgressStyle};
use recommend::analyse;
use report::print_report;

#[derive(clap::Args, Debug)]
pub(crate) struct PinArgs {
    /// The workload to sweep: apply_async, map, latency, cpu_loop or shared_sum.
    #[arg(long, default_value = "apply_async")]
    workload: String,
    /// Items per run (cpu_loop: iterations in total). Default: a fraction of
    /// a second's work (200,000 tasks for apply_async); smaller with --quick.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least_one::<u64>)]
    size: Option<u64>,
    /// Workers in every layout. Default: one per allowed CPU for none and
    /// per-cpu, one per allowed physical core for compact, scatter and
    /// avoid-smt, the list's length for --cpus.
    /// At most 4096.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::worker_count)]
    workers: Option<usize>,
    /// Named layouts to sweep, comma-separated: none, per-cpu, compact, scatter, avoid-smt.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,per-cpu,compact,scatter,avoid-smt"
    )]
    layouts: Vec<String>,
    /// Also sweep this explicit CPU list (such as 0,2-3); repeat the option for several.
    #[arg(long = "cpus", value_name = "LIST")]
    cpus: Vec<String>,
    /// Measured rounds after one warm-up round. Default 5, or 3 with --quick.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::numbers::at_least_one::<usize>)]
    repeat: Option<usize>,
    /// Small sizes: the sweep in a few seconds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object (topology, every layout, the recommendation).
    #[arg(long)]
    json: bool,
    /// Show the topology only; sweep nothing.
    #[arg(long)]
    topology: bool,
}

/// The workloads `pin` sweeps, as `--help` lists them: work done on the
/// pool's workers, whose speed depends on where they run. The others time
/// starting workers (start, respawn), run between two processes of their
/// own (queue, pipe_rtt) or move 8 MiB arguments (bulk, bulk_shared).
const SWEPT: [Workload; 5] = [
    Workload::ApplyAsync,
    Workload::Map,
    Workload::Latency,
    Workload::CpuLoop,
    Workload::SharedSum,
];

/// `--workload`, if `pin` sweeps it; otherwise a message naming the ones it
/// does.
fn swept_workload(name: &str) -> Result<Workload, CliError> {
    let choices = "apply_async, map, latency, cpu_loop or shared_sum";
    let Ok(w) = Workload::parse(name) else {
        let names = SWEPT.map(Workload::name);
        let hint = crate::numbers::did_you_mean(name, &names)
            .map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
        return Err(CliError::usage(format!(
            "unknown workload `{name}`{hint}: choose from {choices}"
        )));
    };
    if SWEPT.contains(&w) {
        return Ok(w);
    }
    let why = match w {
        Workload::Queue | Workload::PipeRtt => "runs between this process and one child process of its own, not on a pool, so the pool's layout does not change it".to_string(),
        Workload::Start | Workload::Respawn => format!("times starting workers, not work done on them (`corepool bench --only {} --pinning LAYOUT` times it for one layout)", w.name()),
        _ => format!("is not one of them (`corepool bench --only {} --pinning LAYOUT` measures it on one layout)", w.name()),
    };
    Err(CliError::usage(format!(
        "pin sweeps one of {choices}; {} {why}",
        w.name()
    )))
}

fn layouts_of(args: &PinArgs) -> Result<Vec<Layout>, CliError> {
    let mut out: Vec<Layout> = Vec::new();
    for name in args.layouts.iter().filter(|n| !n.trim().is_empty()) {
        let l: Layout = name.parse().map_err(CliError::Usage)?;
        if matches!(l, Layout::Cpus(_)) {
            return Err(CliError::usage(format!(
                "--layouts takes layout names; give the CPU list `{name}` with --cpus {name}"
            )));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    for list in &args.cpus {
        match corepool::info::parse_cpu_list(list) {
            Some(cpus) if !cpus.is_empty() => {
                let l = Layout::Cpus(cpus);
                if !out.contains(&l) {
                    out.push(l);
                }
            }
            _ => {
                return Err(CliError::usage(format!(
                    "--cpus `{list}` is not a CPU list: write it as the kernel does, such as 0,2-3"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(CliError::usage(
            "nothing to sweep: give --layouts (none, per-cpu, compact, scatter, avoid-smt) or --cpus LIST",
        ));
    }
    Ok(out)
}

fn default_size(w: Workload, quick: bool) -> u64 {
    match (w, quick) {
        (Workload::ApplyAsync, false) => 200_000,
        (Workload::ApplyAsync, true) => 20_000,
        (Workload::Map, false) => 4 << 20,
        (Workload::Map, true) => 1 << 20,
        (Workload::Latency, false) => 20_000,
        (Workload::Latency, true) => 2_000,
        (Workload::CpuLoop, false) => 400_000_000,
        (Workload::CpuLoop, true) => 40_000_000,
        (Workload::SharedSum, false) => 16 << 20,
        (Workload::SharedSum, true) => 4 << 20,
        // Not swept (they do not run on the pool): bench's sizes.
        (Workload::Queue | Workload::PipeRtt, false) => Sizes::full().get(w),
        (Workload::Queue | Workload::PipeRtt, true) => Sizes::quick().get(w),
        (Workload::Start | Workload::Respawn | Workload::Bulk | Workload::BulkShared, false) => {
            Sizes::full().get(w)
        }
        (Workload::Start | Workload::Respawn | Workload::Bulk | Workload::BulkShared, true) => {
            Sizes::quick().get(w)
        }
    }
}

fn measure(
    w: Workload,
    placement: &Placement,
    sizes: &Sizes,
    warm: &Sizes,
    inputs: &mut Inputs,
) -> Result<Sample, CliError> {
    let pool = Pool::builder()
        .workers(placement.workers)
        .pinning(placement.pinning.clone())
        .build()?;
    corepool_once(w, &pool, warm, inputs, placement.workers)?;
    corepool_once(w, &pool, sizes, inputs, placement.workers)
}

pub(crate) fn run(args: &PinArgs) -> Result<(), CliError> {
    let topo = Topology::read()?;
    if args.topology {
        if args.json {
            outln!("{}", serde_json::to_string(&topo).unwrap_or_default())?;
        } else {
            print_topology(&topo)?;
        }
        return Ok(());
    }
    let w = swept_workload(&args.workload)?;
    let layouts = layouts_of(args)?;
    let repeat = args.repeat.unwrap_or(if args.quick { 3 } else { 5 });
    if repeat == 0 {
        return Err(CliError::usage("--repeat must be at least 1"));
    }
    let n = args.size.unwrap_or(default_size(w, args.quick));
    if n == 0 {
        return Err(CliError::usage("--size must be at least 1"));
    }
    let mut sizes = Sizes::quick();
    sizes.set(w, n);
    crate::workloads::check_fits(&sizes, &[w], args.size)?;
    // Each measurement runs on a fresh pool: warm it up with an eighth of the
    // work, or with the whole array for shared_sum, so that every worker has
    // mapped every page before the timed run.
    let mut warm = sizes.clone();
    if w != Workload::SharedSum {
        warm.set(w, (n / 8).max(1));
    }
    let placements: Vec<Placement> = layouts
        .iter()
        .map(|l| l.place(&topo, args.workers))
        .collect::<Result<_, _>>()?;
    if !args.json {
        print_topology(&topo)?;
        outln!()?;
        outln!(
            "sweep: {} ({}; {}), {n} items per run, {} layouts x {repeat} rounds after 1 warm-up round, interleaved",
            w.name(),
            w.describe(),
            w.unit(),
            layouts.len()
        )?;
    }
    // Saturating: any --repeat is accepted (a huge one only runs long).
    let bar = ProgressBar::new(
        (repeat as u64)
            .saturating_add(1)
            .saturating_mul(layouts.len() as u64),
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut inputs = Inputs::default();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); layouts.len()];
    for round in 0..=repeat {
        for (i, (l, p)) in layouts.iter().zip(&placements).enumerate() {
            bar.set_message(if round == 0 {
                format!("{l} warm-up")
            } else {
                format!("{l} round {round}/{repeat}")
            });
            let s = measure(w, p, &sizes, &warm, &mut inputs)?;
            if round > 0 {
                samples[i].push(s.value);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let report = analyse(&topo, w, n, repeat, &layouts, &placements, &samples);
    if args.json {
        outln!("{}", serde_json::to_string(&report).unwrap_or_default())?;
    } else {
        print_report(&report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_workloads_are_swept() {
        for w in SWEPT {
            assert_eq!(swept_workload(w.name()).unwrap(), w);
        }
        for name in [
            "start",
            "respawn",
            "bulk",
            "bulk_shared",
            "queue",
            "pipe_rtt",
        ] {
            let err = swept_workload(name).unwrap_err().to_string();
            assert!(
                err.contains("apply_async, map, latency, cpu_loop or shared_sum"),
                "{err}"
            );
            assert!(err.contains(name), "{err}");
        }
        let err = swept_workload("nope").unwrap_err().to_string();
        assert!(err.contains("choose from apply_async"), "{err}");
        assert!(!err.contains("bulk"), "lists only what pin sweeps: {err}");
    }

    #[test]
    fn explicit_lists_go_through_cpus() {
        let args = PinArgs {
            workload: "latency".into(),
            size: None,
            workers: None,
            layouts: vec!["0,1".into()],
            cpus: vec![],
            repeat: None,
            quick: true,
            json: true,
            topology: false,
        };
        let err = layouts_of(&args).unwrap_err().to_string();
        assert!(err.contains("--cpus"), "{err}");
    }
}
