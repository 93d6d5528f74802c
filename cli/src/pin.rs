//! `corepool pin`: the topology, then a sweep of pinning layouts on one
//! workload, and the layout to use with its measured margin.
//!
//! Layouts are measured in interleaved rounds (round r runs every layout once,
//! each on a freshly built pool that gets a short warm-up of its own), so a
//! drift of the machine during the sweep hits every layout alike. Round 0 is
//! a warm-up and is not counted.

use crate::stats::{range_of, Summary};
use crate::topo::{cpu_list, print_topology, Layout, Placement, Topology};
use crate::workloads::{corepool_once, Inputs, Sample, Sizes, Workload};
use crate::CliError;
use corepool::Pool;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub(crate) struct PinArgs {
    /// The workload to sweep: apply_async, map, latency, cpu_loop or shared_sum.
    #[arg(long, default_value = "apply_async")]
    workload: String,
    /// Items per run (cpu_loop: iterations in total). Default: a fraction of
    /// a second's work (200,000 tasks for apply_async); smaller with --quick.
    #[arg(long)]
    size: Option<u64>,
    /// Workers in every layout. Default: one per allowed CPU for none and
    /// per-cpu, one per allowed physical core for compact, scatter and
    /// avoid-smt, the list's length for --cpus.
    #[arg(long)]
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
    #[arg(long)]
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

/// One layout's result.
#[derive(Debug, Clone, serde::Serialize)]
struct LayoutResult {
    layout: String,
    /// What to pass to `PoolBuilder::pinning`.
    rust: String,
    workers: usize,
    /// The CPU of each worker; null when unpinned.
    cpus: Option<Vec<usize>>,
    median: f64,
    min: f64,
    max: f64,
    /// Other layouts that place the workers on exactly the same CPUs.
    same_as: Vec<String>,
    /// This layout's median against the chosen placement's (the runs of all
    /// its identical layouts together): +0.12 = 12% better, -0.12 = 12%
    /// worse (for latency: in round-trip speed).
    vs_chosen: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Recommendation {
    layout: String,
    rust: String,
    workers: usize,
    /// `Pool::builder()...` as Rust source.
    builder: String,
    median: f64,
    unit: &'static str,
    /// The layout whose placement had the best median. The choice differs
    /// from it when its lead is not established: then the simplest of the
    /// placements that measure alike is chosen (the default first).
    measured_best: String,
    /// The best placement other than the chosen one, and the chosen one's
    /// margin over it (0.12 = 12% better; negative when a faster placement
    /// was not clearly faster); null when every layout coincides.
    runner_up: Option<String>,
    margin_over_runner_up: Option<f64>,
    /// The margin over every layout placed differently.
    margin_over: BTreeMap<String, f64>,
    /// Whether the chosen placement's range of runs stays clear of the
    /// runner-up's.
    clear_of_noise: bool,
    /// Clear of the runner-up's range and by more than the noise.
    established: bool,
    /// The largest spread between medians of layouts that coincide: the
    /// run-to-run noise of this machine.
    noise: Option<f64>,
    summary: String,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    topology: Topology,
    workload: &'static str,
    unit: &'static str,
    items: u64,
    repeat: usize,
    lower_is_better: bool,
    layouts: Vec<LayoutResult>,
    recommendation: Recommendation,
    notes: Vec<String>,
}

/// Preference among layouts that measure alike: the default first, so that
/// "no change" wins a tie.
fn preference(l: &Layout) -> usize {
    match l {
        Layout::PerCpu => 0,
        Layout::AvoidSmt => 1,
        Layout::Scatter => 2,
        Layout::Compact => 3,
        Layout::Cpus(_) => 4,
        Layout::None => 5,
    }
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

/// How much better `a` is than `b` (positive: better).
fn advantage(a: f64, b: f64, lower_is_better: bool) -> f64 {
    if lower_is_better {
        b / a.max(1e-12) - 1.0
    } else {
        a / b.max(1e-12) - 1.0
    }
}

pub(crate) fn run(args: &PinArgs) -> Result<(), CliError> {
    let topo = Topology::read()?;
    if args.topology {
        if args.json {
            println!("{}", serde_json::to_string(&topo).unwrap_or_default());
        } else {
            print_topology(&topo);
        }
        return Ok(());
    }
    let w = Workload::parse(&args.workload)?;
    if !w.uses_pool() {
        return Err(CliError::usage(format!(
            "{} runs between this process and one child process of its own, not on a pool, so the pool's layout does not change it: sweep apply_async, map, latency, cpu_loop or shared_sum",
            w.name()
        )));
    }
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
        print_topology(&topo);
        println!();
        println!(
            "sweep: {} ({}; {}), {n} items per run, {} layouts x {repeat} rounds after 1 warm-up round, interleaved",
            w.name(),
            w.describe(),
            w.unit(),
            layouts.len()
        );
    }
    let bar = ProgressBar::new((repeat as u64 + 1) * layouts.len() as u64);
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
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_report(&report);
    }
    Ok(())
}

fn analyse(
    topo: &Topology,
    w: Workload,
    items: u64,
    repeat: usize,
    layouts: &[Layout],
    placements: &[Placement],
    samples: &[Vec<f64>],
) -> Report {
    let low = w.lower_is_better();
    let stats: Vec<Summary> = samples.iter().map(|s| Summary::of(s)).collect();
    let same = |i: usize, j: usize| {
        placements[i].key() == placements[j].key() && placements[i].workers == placements[j].workers
    };
    // Layouts that place the workers identically form one group; a group is
    // judged on the runs of all its members together.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..layouts.len() {
        match groups.iter_mut().find(|g| same(g[0], i)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let pooled: Vec<Summary> = groups
        .iter()
        .map(|g| {
            Summary::of(
                &g.iter()
                    .flat_map(|&i| samples[i].clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    // Each group is represented by its preferred member.
    let rep: Vec<usize> = groups
        .iter()
        .map(|g| {
            g.iter()
                .copied()
                .min_by_key(|&i| preference(&layouts[i]))
                .unwrap_or(g[0])
        })
        .collect();
    // Noise: the spread of medians within groups of identical placements.
    let mut noise: Option<f64> = None;
    for g in &groups {
        for (k, &i) in g.iter().enumerate() {
            for &j in &g[k + 1..] {
                let d = advantage(stats[i].median, stats[j].median, low).abs();
                noise = Some(noise.map_or(d, |n: f64| n.max(d)));
            }
        }
    }
    // Groups from best to worst by pooled median.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| {
        let d = advantage(pooled[a].median, pooled[b].median, low);
        if d.abs() < 1e-3 {
            preference(&layouts[rep[a]]).cmp(&preference(&layouts[rep[b]]))
        } else if d > 0.0 {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    let best_group = order[0];
    // A lead over group g is established when the ranges of runs do not
    // overlap and the margin exceeds the noise between identical layouts.
    let clear_of = |a: usize, g: usize| {
        let (x, y) = (&pooled[a], &pooled[g]);
        if low {
            x.max < y.min
        } else {
            x.min > y.max
        }
    };
    let established = |a: usize, g: usize| {
        clear_of(a, g)
            && noise.is_none_or(|n| advantage(pooled[a].median, pooled[g].median, low) > n)
    };
    // The choice: among the measured best and every placement it does not
    // clearly beat, the simplest (the default first).
    let chosen_group = order
        .iter()
        .copied()
        .filter(|&g| g == best_group || !established(best_group, g))
        .min_by_key(|&g| preference(&layouts[rep[g]]))
        .unwrap_or(best_group);
    let chosen = rep[chosen_group];
    let chosen_median = pooled[chosen_group].median;
    let results: Vec<LayoutResult> = (0..layouts.len())
        .map(|i| LayoutResult {
            layout: layouts[i].to_string(),
            rust: placements[i].rust(),
            workers: placements[i].workers,
            cpus: placements[i].cpus.clone(),
            median: stats[i].median,
            min: stats[i].min,
            max: stats[i].max,
            same_as: (0..layouts.len())
                .filter(|&j| j != i && same(i, j))
                .map(|j| layouts[j].to_string())
                .collect(),
            vs_chosen: advantage(stats[i].median, chosen_median, low),
            note: placements[i].note.clone(),
        })
        .collect();
    let runner_group = order.iter().copied().find(|&g| g != chosen_group);
    let margin_over: BTreeMap<String, f64> = (0..layouts.len())
        .filter(|&i| !groups[chosen_group].contains(&i))
        .map(|i| {
            (
                layouts[i].to_string(),
                advantage(chosen_median, stats[i].median, low),
            )
        })
        .collect();
    let margin = runner_group.map(|g| advantage(chosen_median, pooled[g].median, low));
    let is_established = runner_group.is_some_and(|g| established(chosen_group, g));
    let clear = runner_group.is_some_and(|g| clear_of(chosen_group, g));
    let p = &placements[chosen];
    let builder = format!(
        "Pool::builder().workers({}).pinning({})",
        p.workers,
        p.rust()
    );
    let mut notes = Vec::new();
    for g in groups.iter().filter(|g| g.len() > 1) {
        let names: Vec<String> = g.iter().map(|&i| layouts[i].to_string()).collect();
        let cpus = placements[g[0]]
            .cpus
            .as_ref()
            .map_or("unpinned".to_string(), |c| {
                format!(
                    "CPUs {}",
                    c.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            });
        notes.push(format!(
            "{} place the workers identically on this machine ({cpus}): they are judged together, and the differences between them are run-to-run noise",
            names.join(", ")
        ));
    }
    if !topo.smt {
        notes.push(
            "no SMT siblings here: avoid-smt cannot differ from one worker per CPU".to_string(),
        );
    }
    if topo.packages < 2 {
        notes.push("one package: scatter and compact differ only through SMT siblings".to_string());
    }
    let what = if low {
        "faster round trips"
    } else {
        "more throughput"
    };
    let name = |g: usize| {
        let others: Vec<String> = groups[g]
            .iter()
            .filter(|&&i| i != rep[g])
            .map(|&i| layouts[i].to_string())
            .collect();
        if others.is_empty() {
            layouts[rep[g]].to_string()
        } else {
            format!("{} (= {})", layouts[rep[g]], others.join(" = "))
        }
    };
    // Why a lead is not established, in words.
    let why_not = |a: usize, g: usize| {
        if !clear_of(a, g) {
            "the ranges of runs overlap".to_string()
        } else {
            format!(
                "the margin is below the {:.1}% that identical layouts differed by",
                noise.unwrap_or(0.0) * 100.0
            )
        }
    };
    let summary = match (runner_group, margin) {
        (Some(r), Some(m)) if chosen_group == best_group && is_established => format!(
            "{}: {:.1}% {what} than the next placement, {}; the ranges of runs do not overlap{}",
            name(chosen_group),
            m * 100.0,
            name(r),
            noise.map_or(String::new(), |n| format!(
                " and the margin exceeds the {:.1}% that identical layouts differed by",
                n * 100.0
            ))
        ),
        (Some(r), Some(m)) if chosen_group == best_group => format!(
            "{}: {:.1}% {what} than the next placement, {}, but not established ({}); it is also the simplest, so use it",
            name(chosen_group),
            m * 100.0,
            name(r),
            why_not(chosen_group, r)
        ),
        (Some(_), Some(_)) => format!(
            "{}: {} measured {:.1}% {what}, but that is not established ({}), so keep the simpler {}",
            name(chosen_group),
            layouts[rep[best_group]],
            advantage(pooled[best_group].median, chosen_median, low) * 100.0,
            why_not(best_group, chosen_group),
            layouts[chosen]
        ),
        _ => format!(
            "every layout places the workers identically here: keep {} ({})",
            layouts[chosen],
            p.rust()
        ),
    };
    Report {
        topology: topo.clone(),
        workload: w.name(),
        unit: w.unit(),
        items,
        repeat,
        lower_is_better: low,
        layouts: results,
        recommendation: Recommendation {
            layout: layouts[chosen].to_string(),
            rust: p.rust(),
            workers: p.workers,
            builder,
            median: chosen_median,
            unit: w.unit(),
            measured_best: layouts[rep[best_group]].to_string(),
            runner_up: runner_group.map(|g| layouts[rep[g]].to_string()),
            margin_over_runner_up: margin,
            margin_over,
            clear_of_noise: clear,
            established: is_established,
            noise,
            summary,
        },
        notes,
    }
}

fn value_text(v: f64, unit: &str) -> String {
    if unit == "ns" {
        return format!("{v:.0} ns");
    }
    match v {
        r if r >= 1e9 => format!("{:.2} G{unit}", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M{unit}", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k{unit}", r / 1e3),
        r => format!("{r:.0} {unit}"),
    }
}

fn print_report(r: &Report) {
    println!();
    println!(
        "{:<14} {:>7} {:<10} {:>18} {:>18} {:>10}",
        "layout", "workers", "CPUs", "median", "range", "vs chosen"
    );
    for l in &r.layouts {
        let cpus = l.cpus.as_ref().map_or("unpinned".to_string(), |c| {
            let mut s = c.clone();
            s.sort_unstable();
            s.dedup();
            cpu_list(&s)
        });
        let vs = if l.layout == r.recommendation.layout {
            "chosen".to_string()
        } else {
            format!("{:+.1}%", l.vs_chosen * 100.0)
        };
        println!(
            "{:<14} {:>7} {:<10} {:>18} {:>18} {:>10}{}",
            l.layout,
            l.workers,
            cpus,
            value_text(l.median, r.unit),
            range_of(l.min, l.max, l.median, r.unit),
            vs,
            l.note
                .as_ref()
                .map_or(String::new(), |n| format!("  ({n})"))
        );
    }
    println!();
    println!(
        "vs chosen: each layout's median against the chosen placement's (all runs of its identical layouts together); {}",
        if r.lower_is_better {
            "negative = slower round trips"
        } else {
            "negative = less throughput"
        }
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    println!();
    println!("recommendation: {}", r.recommendation.summary);
    println!("  {}", r.recommendation.builder);
}

#[cfg(test)]
mod tests {
    use super::*;
    use corepool::Pinning;

    fn placement(cpus: Option<Vec<usize>>) -> Placement {
        Placement {
            pinning: match &cpus {
                Some(c) => Pinning::Cpus(c.clone()),
                None => Pinning::None,
            },
            workers: 2,
            cpus,
            note: None,
        }
    }

    fn topo() -> Topology {
        Topology {
            model: "test".into(),
            cpus_online: 2,
            packages: 1,
            cores: 2,
            smt: false,
            allowed: vec![0, 1],
            allowed_cores: 2,
            cpus: Vec::new(),
            numa_nodes: Vec::new(),
            caches: Vec::new(),
        }
    }

    #[test]
    fn identical_layouts_tie_to_the_default_and_margins_are_reported() {
        let layouts = vec![Layout::None, Layout::PerCpu, Layout::Compact];
        let placements = vec![
            placement(None),
            placement(Some(vec![0, 1])),
            placement(Some(vec![0, 1])),
        ];
        // compact measured a bit faster than per-cpu, both beat none.
        let samples = vec![
            vec![80.0, 82.0, 81.0],
            vec![99.0, 100.0, 101.0],
            vec![101.0, 102.0, 103.0],
        ];
        let r = analyse(
            &topo(),
            Workload::ApplyAsync,
            10,
            3,
            &layouts,
            &placements,
            &samples,
        );
        assert_eq!(r.recommendation.layout, "per-cpu");
        assert_eq!(r.recommendation.runner_up.as_deref(), Some("none"));
        // per-cpu and compact are judged together: median of their six runs.
        let m = r.recommendation.margin_over_runner_up.unwrap();
        assert!((m - (101.0 / 81.0 - 1.0)).abs() < 1e-9, "{m}");
        assert!(r.recommendation.clear_of_noise);
        assert!(r.recommendation.noise.unwrap() > 0.0);
        assert_eq!(r.layouts[1].same_as, vec!["compact".to_string()]);
    }

    #[test]
    fn latency_prefers_the_lower_median() {
        let layouts = vec![Layout::None, Layout::PerCpu];
        let placements = vec![placement(None), placement(Some(vec![0, 1]))];
        let samples = vec![vec![900.0, 1000.0], vec![600.0, 700.0]];
        let r = analyse(
            &topo(),
            Workload::Latency,
            10,
            2,
            &layouts,
            &placements,
            &samples,
        );
        assert_eq!(r.recommendation.layout, "per-cpu");
        assert!(r.recommendation.margin_over_runner_up.unwrap() > 0.0);
        assert!(r.layouts[0].vs_chosen < 0.0);
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
