//! The pinning layouts `corepool pin` sweeps and `corepool bench --pinning`
//! accepts, and where each one puts a pool's workers on a [`Topology`].

use super::{cpu_list, Topology};
use crate::CliError;
use corepool::Pinning;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A way to place workers on CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `Pinning::None`: the scheduler places the workers.
    None,
    /// `Pinning::PerCpu`: worker i on the i-th allowed CPU (the default).
    PerCpu,
    /// SMT siblings of one core first, then the next core, package by package.
    Compact,
    /// Across packages first, then cores, SMT siblings last.
    Scatter,
    /// One CPU per physical core, never two workers on SMT siblings; at most
    /// as many workers as cores.
    AvoidSmt,
    /// An explicit list: worker i on `list[i % len]`.
    Cpus(Vec<usize>),
}

const LAYOUT_HELP: &str = "none, per-cpu, compact, scatter, avoid-smt, or a CPU list such as 0,2-3";

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "unpinned" => Ok(Layout::None),
            "per-cpu" | "percpu" | "one-per-cpu" => Ok(Layout::PerCpu),
            "compact" => Ok(Layout::Compact),
            "scatter" | "spread" => Ok(Layout::Scatter),
            "avoid-smt" | "no-smt" | "nosmt" | "one-per-core" => Ok(Layout::AvoidSmt),
            other => match corepool::info::parse_cpu_list(other) {
                Some(list) if !list.is_empty() => Ok(Layout::Cpus(list)),
                _ => Err(format!(
                    "`{s}` is not a layout: use one of {LAYOUT_HELP} (see `corepool pin` for this machine's CPUs)"
                )),
            },
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::None => write!(f, "none"),
            Layout::PerCpu => write!(f, "per-cpu"),
            Layout::Compact => write!(f, "compact"),
            Layout::Scatter => write!(f, "scatter"),
            Layout::AvoidSmt => write!(f, "avoid-smt"),
            Layout::Cpus(list) => {
                let shown: Vec<String> = list.iter().map(|c| c.to_string()).collect();
                write!(f, "cpus:{}", shown.join(","))
            }
        }
    }
}

/// A layout made concrete for a worker count.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    pub(crate) pinning: Pinning,
    pub(crate) workers: usize,
    /// The CPU of each worker; `None` when unpinned.
    pub(crate) cpus: Option<Vec<usize>>,
    /// Something the user should know (workers capped, sharing CPUs).
    pub(crate) note: Option<String>,
}

impl Placement {
    /// `Pinning::Cpus(vec![0, 1])` and so on, as Rust source.
    pub(crate) fn rust(&self) -> String {
        match &self.pinning {
            Pinning::None => "Pinning::None".into(),
            Pinning::PerCpu => "Pinning::PerCpu".into(),
            Pinning::Cpus(list) => {
                let shown: Vec<String> = list.iter().map(|c| c.to_string()).collect();
                format!("Pinning::Cpus(vec![{}])", shown.join(", "))
            }
        }
    }

    /// The set of CPUs used, sorted with repeats (to spot layouts that
    /// coincide); `None` when unpinned.
    pub(crate) fn key(&self) -> Option<Vec<usize>> {
        self.cpus.as_ref().map(|c| {
            let mut c = c.clone();
            c.sort_unstable();
            c
        })
    }
}

impl Layout {
    /// The workers and pinning for this layout; `workers` is `None` for the
    /// layout's own natural count (its CPU list's length; for compact and
    /// scatter, one per allowed physical core).
    pub(crate) fn place(
        &self,
        topo: &Topology,
        workers: Option<usize>,
    ) -> Result<Placement, CliError> {
        if workers == Some(0) {
            return Err(CliError::usage("--workers must be at least 1"));
        }
        let take = |order: Vec<usize>, n: usize| -> Vec<usize> {
            (0..n).map(|i| order[i % order.len()]).collect()
        };
        if topo.allowed.is_empty() {
            return Err(CliError::usage(
                "this process may run on no CPU at all: widen its allowed set (taskset, cgroups)",
            ));
        }
        let mut note = None;
        let (pinning, n, cpus) = match self {
            Layout::None => {
                let n = workers.unwrap_or(topo.allowed.len());
                (Pinning::None, n, None)
            }
            Layout::PerCpu => {
                let n = workers.unwrap_or(topo.allowed.len());
                (Pinning::PerCpu, n, Some(take(topo.allowed.clone(), n)))
            }
            Layout::Compact | Layout::Scatter => {
                let order = if *self == Layout::Compact {
                    topo.compact_order()
                } else {
                    topo.scatter_order()
                };
                let n = workers.unwrap_or(topo.allowed_cores);
                let cpus = take(order, n);
                (Pinning::Cpus(cpus.clone()), n, Some(cpus))
            }
            Layout::AvoidSmt => {
                let cores = topo.one_per_core();
                let n = workers.unwrap_or(cores.len());
                let n = if n > cores.len() {
                    note = Some(format!(
                        "capped at {} workers: one per physical core",
                        cores.len()
                    ));
                    cores.len()
                } else {
                    n
                };
                let cpus = take(cores, n);
                (Pinning::Cpus(cpus.clone()), n, Some(cpus))
            }
            Layout::Cpus(list) => {
                if let Some(bad) = list.iter().find(|c| !topo.allowed.contains(c)) {
                    return Err(CliError::usage(format!(
                        "CPU {bad} is not in this process's allowed set {}: pick CPUs from it (see `corepool pin`), or widen it with taskset",
                        cpu_list(&topo.allowed)
                    )));
                }
                let n = workers.unwrap_or(list.len());
                let cpus = take(list.clone(), n);
                (Pinning::Cpus(list.clone()), n, Some(cpus))
            }
        };
        if n > crate::numbers::MAX_WORKERS {
            // A CPU list longer than the limit, or an allowed set larger
            // than it (the default is one worker per allowed CPU).
            let layout = match self {
                Layout::Cpus(list) => format!("--cpus (a list of {})", list.len()),
                named => named.to_string(),
            };
            return Err(CliError::usage(format!(
                "{layout}: {}; give fewer with --workers",
                crate::numbers::too_many_workers(n)
            )));
        }
        if let Some(c) = &cpus {
            let distinct: BTreeSet<_> = c.iter().collect();
            if distinct.len() < c.len() && note.is_none() {
                note = Some(format!(
                    "{} workers share {}",
                    c.len(),
                    crate::output::count(distinct.len(), "CPU", "CPUs")
                ));
            }
        }
        Ok(Placement {
            pinning,
            workers: n,
            cpus,
            note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topo::tests::two_socket_smt;

    #[test]
    fn layouts_on_a_two_socket_smt_machine() {
        let t = two_socket_smt();
        let p = Layout::Compact.place(&t, Some(2)).unwrap();
        assert_eq!(p.cpus, Some(vec![0, 4]));
        let p = Layout::Scatter.place(&t, Some(2)).unwrap();
        assert_eq!(p.cpus, Some(vec![0, 2]));
        let p = Layout::AvoidSmt.place(&t, Some(8)).unwrap();
        assert_eq!(p.workers, 4);
        assert!(p.note.is_some());
        let p = Layout::Scatter.place(&t, None).unwrap();
        assert_eq!(p.workers, 4);
    }

    #[test]
    fn parses_layouts_and_lists() {
        assert_eq!("none".parse::<Layout>(), Ok(Layout::None));
        assert_eq!("Avoid-SMT".parse::<Layout>(), Ok(Layout::AvoidSmt));
        assert_eq!("0,2-3".parse::<Layout>(), Ok(Layout::Cpus(vec![0, 2, 3])));
        let err = "sideways".parse::<Layout>().unwrap_err();
        assert!(err.contains("per-cpu"), "{err}");
    }

    #[test]
    fn rejects_cpus_outside_the_allowed_set() {
        let mut t = two_socket_smt();
        t.allowed = vec![0, 1];
        let err = Layout::Cpus(vec![5]).place(&t, None).unwrap_err();
        assert!(err.to_string().contains("allowed set"), "{err}");
        assert!(Layout::PerCpu.place(&t, Some(0)).is_err());
    }
}
