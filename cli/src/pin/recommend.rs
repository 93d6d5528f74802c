//! `corepool pin`'s judgement: from the runs of every layout, which
//! placements coincide, how noisy the machine is, which layout to use and by
//! what margin.

use crate::stats::Summary;
use crate::topo::{Layout, Placement, Topology};
use crate::workloads::Workload;
use std::collections::BTreeMap;

/// One layout's result.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct LayoutResult {
    pub(super) layout: String,
    /// What to pass to `PoolBuilder::pinning`.
    pub(super) rust: String,
    pub(super) workers: usize,
    /// The CPU of each worker; null when unpinned.
    pub(super) cpus: Option<Vec<usize>>,
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    /// Other layouts that place the workers on exactly the same CPUs.
    pub(super) same_as: Vec<String>,
    /// This layout's median against the chosen placement's (the runs of all
    /// its identical layouts together): +0.12 = 12% better, -0.12 = 12%
    /// worse (for latency: in round-trip speed).
    pub(super) vs_chosen: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Recommendation {
    pub(super) layout: String,
    pub(super) rust: String,
    pub(super) workers: usize,
    /// `Pool::builder()...` as Rust source.
    pub(super) builder: String,
    pub(super) median: f64,
    pub(super) unit: &'static str,
    /// The layout whose placement had the best median. The choice differs
    /// from it when its lead is not established: then the simplest of the
    /// placements that measure alike is chosen (the default first).
    pub(super) measured_best: String,
    /// The best placement other than the chosen one, and the chosen one's
    /// margin over it (0.12 = 12% better; negative when a faster placement
    /// was not clearly faster); null when every layout coincides.
    pub(super) runner_up: Option<String>,
    pub(super) margin_over_runner_up: Option<f64>,
    /// The margin over every layout placed differently.
    pub(super) margin_over: BTreeMap<String, f64>,
    /// Whether the chosen placement's range of runs stays clear of the
    /// runner-up's.
    pub(super) clear_of_noise: bool,
    /// Clear of the runner-up's range and by more than the noise.
    pub(super) established: bool,
    /// The largest spread between medians of layouts that coincide: the
    /// run-to-run noise of this machine.
    pub(super) noise: Option<f64>,
    pub(super) summary: String,
}

#[derive(Debug, serde::Serialize)]
pub(super) struct Report {
    pub(super) topology: Topology,
    pub(super) workload: &'static str,
    pub(super) unit: &'static str,
    pub(super) items: u64,
    pub(super) repeat: usize,
    pub(super) lower_is_better: bool,
    pub(super) layouts: Vec<LayoutResult>,
    pub(super) recommendation: Recommendation,
    pub(super) notes: Vec<String>,
}

/// Whether a placement puts more workers than CPUs: pinned, on fewer
/// distinct CPUs than it has workers (`cpus:1,1`); unpinned, more workers
/// than the CPUs this process may use.
fn oversubscribed(p: &Placement, allowed: usize) -> bool {
    match &p.cpus {
        Some(cpus) => cpus.iter().collect::<std::collections::BTreeSet<_>>().len() < p.workers,
        None => p.workers > allowed,
    }
}

/// The tie-break among placements that measure alike, smallest first: one
/// that gives every worker a CPU of its own before one that crowds
/// workers onto shared CPUs (that never wins a tie: its only claim would
/// be a lead that is not established), then the simplest, by
/// [`preference`].
fn tie_break(l: &Layout, p: &Placement, allowed: usize) -> (bool, usize) {
    (oversubscribed(p, allowed), preference(l))
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

/// How much better `a` is than `b` (positive: better).
fn advantage(a: f64, b: f64, lower_is_better: bool) -> f64 {
    if lower_is_better {
        b / a.max(1e-12) - 1.0
    } else {
        a / b.max(1e-12) - 1.0
    }
}

/// Judges a sweep: `samples[i]` are the measured runs of `layouts[i]`,
/// placed as `placements[i]`.
pub(super) fn analyse(
    topo: &Topology,
    w: Workload,
    items: u64,
    repeat: usize,
    layouts: &[Layout],
    placements: &[Placement],
    samples: &[Vec<f64>],
) -> Report {
    let low = w.lower_is_better();
    let allowed = topo.allowed.len();
    let rank = |g_rep: usize| tie_break(&layouts[g_rep], &placements[g_rep], allowed);
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
            rank(rep[a]).cmp(&rank(rep[b]))
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
    // clearly beat, the first by `tie_break` (no shared CPUs, then the
    // simplest, the default first); but never one with fewer workers than
    // the measured best, whose lead in noise is no reason to shrink the pool
    // (mixed counts come from --workers or --cpus).
    let best_workers = placements[rep[best_group]].workers;
    let chosen_group = order
        .iter()
        .copied()
        .filter(|&g| g == best_group || !established(best_group, g))
        .filter(|&g| placements[rep[g]].workers >= best_workers)
        .min_by_key(|&g| rank(rep[g]))
        .unwrap_or(best_group);
    // Whether the tie-break had simpler layouts to choose from and passed
    // them over for their fewer workers.
    let fewer_passed_over = order.iter().any(|&g| {
        g != chosen_group
            && !established(best_group, g)
            && placements[rep[g]].workers < best_workers
            && rank(rep[g]) < rank(rep[chosen_group])
    });
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
    if !topo.known {
        notes.push(
            "the topology is unknown here (/sys/devices/system/cpu does not describe it): avoid-smt, compact and scatter assumed one CPU per core and one package".to_string(),
        );
    } else if !topo.smt {
        notes.push(
            "no SMT siblings here: avoid-smt cannot differ from one worker per CPU".to_string(),
        );
    }
    if topo.known && topo.packages < 2 {
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
            "{}: {:.1}% {what} than the next placement, {}, but not established ({}); {}, so use it",
            name(chosen_group),
            m * 100.0,
            name(r),
            why_not(chosen_group, r),
            if fewer_passed_over {
                "the simpler layouts run fewer workers"
            } else {
                "it is also the simplest"
            }
        ),
        (Some(_), Some(_)) => format!(
            "{}: {} measured {:.1}% {what}, but that is not established ({}), so keep {}",
            name(chosen_group),
            layouts[rep[best_group]],
            advantage(pooled[best_group].median, chosen_median, low) * 100.0,
            why_not(best_group, chosen_group),
            if oversubscribed(&placements[rep[best_group]], allowed)
                && !oversubscribed(p, allowed)
            {
                format!(
                    "{}, which gives each worker a CPU of its own ({} puts {} workers on fewer CPUs)",
                    layouts[chosen],
                    layouts[rep[best_group]],
                    placements[rep[best_group]].workers
                )
            } else {
                format!("the simpler {}", layouts[chosen])
            }
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
            known: true,
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
    fn an_unknown_topology_is_not_stated_as_fact() {
        let t = Topology {
            known: false,
            ..topo()
        };
        let shape = t.shape();
        assert!(shape.starts_with("unknown"), "{shape}");
        assert!(!shape.contains("no SMT"), "{shape}");
        let r = analyse(
            &t,
            Workload::ApplyAsync,
            10,
            1,
            &[Layout::None],
            &[placement(None)],
            &[vec![1.0]],
        );
        assert!(
            r.notes.iter().any(|n| n.contains("unknown")),
            "{:?}",
            r.notes
        );
        assert!(
            !r.notes.iter().any(|n| n.contains("no SMT")),
            "{:?}",
            r.notes
        );
        assert!(topo().shape().contains("no SMT siblings"));
    }

    #[test]
    fn a_tie_never_shrinks_the_pool() {
        // The trial's sweep: none on 2 workers measured 70% more than one
        // worker on CPU 1, in overlapping ranges; the "simpler" CPU list
        // must not win with half the workers.
        let layouts = vec![Layout::None, Layout::Cpus(vec![0]), Layout::Cpus(vec![1])];
        let one = |cpu: usize| Placement {
            workers: 1,
            ..placement(Some(vec![cpu]))
        };
        let placements = vec![placement(None), one(0), one(1)];
        let samples = vec![
            vec![1.35, 3.59, 3.77],
            vec![0.81, 1.01, 3.73],
            vec![1.50, 2.10, 3.81],
        ];
        let r = analyse(
            &topo(),
            Workload::CpuLoop,
            10,
            3,
            &layouts,
            &placements,
            &samples,
        );
        assert_eq!(
            r.recommendation.layout, "none",
            "{}",
            r.recommendation.summary
        );
        assert_eq!(r.recommendation.workers, 2);
        assert!(!r.recommendation.established);
        assert!(
            r.recommendation.summary.contains("fewer workers"),
            "{}",
            r.recommendation.summary
        );
    }

    /// The trial's sweep (trial25 F8): `--cpus 0 --cpus 1,1 --layouts none`
    /// on 2 CPUs, in overlapping ranges.
    fn crowded_sweep(samples: Vec<Vec<f64>>) -> Report {
        let layouts = vec![
            Layout::None,
            Layout::Cpus(vec![0]),
            Layout::Cpus(vec![1, 1]),
        ];
        let placements = vec![
            placement(None),
            Placement {
                workers: 1,
                ..placement(Some(vec![0]))
            },
            placement(Some(vec![1, 1])),
        ];
        analyse(
            &topo(),
            Workload::ApplyAsync,
            10,
            3,
            &layouts,
            &placements,
            &samples,
        )
    }

    #[test]
    fn a_layout_that_crowds_workers_never_wins_a_tie() {
        // none measured best, cpus:1,1 (two workers on CPU 1) close behind:
        // none stays, however "simple" the list is.
        let r = crowded_sweep(vec![
            vec![1.40, 1.65, 1.80],
            vec![1.10, 1.25, 1.30],
            vec![1.30, 1.51, 1.70],
        ]);
        assert_eq!(
            r.recommendation.layout, "none",
            "{}",
            r.recommendation.summary
        );
        assert!(!r.recommendation.established);
        // cpus:1,1 measured best, but not clearly: none, which gives each
        // worker a CPU of its own, is chosen, and the summary says why.
        let r = crowded_sweep(vec![
            vec![1.30, 1.51, 1.70],
            vec![1.10, 1.25, 1.30],
            vec![1.40, 1.65, 1.80],
        ]);
        assert_eq!(
            r.recommendation.layout, "none",
            "{}",
            r.recommendation.summary
        );
        assert_eq!(r.recommendation.measured_best, "cpus:1,1");
        assert!(
            r.recommendation.summary.contains(
                "which gives each worker a CPU of its own (cpus:1,1 puts 2 workers on fewer CPUs)"
            ),
            "{}",
            r.recommendation.summary
        );
        // A crowded layout clearly faster (ranges apart) is still chosen:
        // that is a measurement, not a tie.
        let r = crowded_sweep(vec![
            vec![1.00, 1.05, 1.10],
            vec![0.80, 0.85, 0.90],
            vec![2.00, 2.10, 2.20],
        ]);
        assert_eq!(r.recommendation.layout, "cpus:1,1");
        assert!(r.recommendation.established);
    }

    #[test]
    fn the_tie_break_order() {
        let allowed = 2;
        let two = placement(Some(vec![0, 1]));
        let crowded = placement(Some(vec![1, 1]));
        let unpinned = placement(None);
        let unpinned_crowded = Placement {
            workers: 3,
            ..placement(None)
        };
        let order = [
            tie_break(&Layout::PerCpu, &two, allowed),
            tie_break(&Layout::AvoidSmt, &two, allowed),
            tie_break(&Layout::Scatter, &two, allowed),
            tie_break(&Layout::Compact, &two, allowed),
            tie_break(&Layout::Cpus(vec![0, 1]), &two, allowed),
            tie_break(&Layout::None, &unpinned, allowed),
            tie_break(&Layout::PerCpu, &crowded, allowed),
            tie_break(&Layout::Cpus(vec![1, 1]), &crowded, allowed),
            tie_break(&Layout::None, &unpinned_crowded, allowed),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
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
}
