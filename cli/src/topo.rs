//! The machine's topology as `/sys` tells it (packages, cores, SMT siblings,
//! NUMA nodes, caches), and the pinning layouts `corepool pin` sweeps and
//! `corepool bench --pinning` accepts.

use crate::CliError;
use corepool::Pinning;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::str::FromStr;

/// One allowed logical CPU and where it sits.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct CpuPlace {
    pub(crate) id: usize,
    pub(crate) package: u32,
    pub(crate) core: u32,
    pub(crate) numa_node: Option<u32>,
    /// The logical CPUs sharing this CPU's core, as the kernel lists them.
    pub(crate) siblings: String,
    pub(crate) allowed: bool,
}

/// One cache as `/sys/devices/system/cpu/cpu*/cache/index*` describes it,
/// merged over the CPUs that report it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Cache {
    pub(crate) level: u32,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// As the kernel writes it (`32K`).
    pub(crate) size: String,
    pub(crate) size_bytes: Option<u64>,
    /// How many distinct instances (one per `shared_cpu_list`).
    pub(crate) instances: usize,
    /// The CPU set of each instance (`0-1`).
    pub(crate) shared_cpu_lists: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct NumaNode {
    pub(crate) node: u32,
    pub(crate) cpus: Vec<usize>,
}

/// The machine, for choosing layouts and for the benchmark's header.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Topology {
    pub(crate) model: String,
    /// Logical CPUs online.
    pub(crate) cpus_online: usize,
    /// Physical packages (sockets) among the online CPUs.
    pub(crate) packages: usize,
    /// Physical cores among the online CPUs.
    pub(crate) cores: usize,
    /// Whether some core runs more than one logical CPU.
    pub(crate) smt: bool,
    /// This process's allowed set (`sched_getaffinity`).
    pub(crate) allowed: Vec<usize>,
    /// Physical cores that have at least one allowed CPU.
    pub(crate) allowed_cores: usize,
    pub(crate) cpus: Vec<CpuPlace>,
    pub(crate) numa_nodes: Vec<NumaNode>,
    pub(crate) caches: Vec<Cache>,
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// `32K` -> 32768.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

fn read_caches(cpus: &[usize]) -> Vec<Cache> {
    // (level, type, size) -> set of shared_cpu_list strings
    let mut found: BTreeMap<(u32, String, String), BTreeSet<String>> = BTreeMap::new();
    for &cpu in cpus {
        let Ok(dir) = fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}/cache")) else {
            continue;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("index")) else {
                continue;
            };
            let base = format!("/sys/devices/system/cpu/cpu{cpu}/cache/{name}");
            let Some(level) = read_trim(&format!("{base}/level")).and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let kind = read_trim(&format!("{base}/type")).unwrap_or_else(|| "?".into());
            let size = read_trim(&format!("{base}/size")).unwrap_or_else(|| "?".into());
            let shared =
                read_trim(&format!("{base}/shared_cpu_list")).unwrap_or_else(|| cpu.to_string());
            found.entry((level, kind, size)).or_default().insert(shared);
        }
    }
    found
        .into_iter()
        .map(|((level, kind, size), shared)| Cache {
            level,
            size_bytes: parse_size(&size),
            kind,
            size,
            instances: shared.len(),
            shared_cpu_lists: shared.into_iter().collect(),
        })
        .collect()
}

impl Topology {
    /// Reads the topology of the online CPUs. CPUs whose package or core
    /// `/sys` does not tell count as a package 0 core of their own.
    pub(crate) fn read() -> Result<Self, CliError> {
        let m = corepool::info::machine()?;
        let cpus: Vec<CpuPlace> = m
            .cpus
            .iter()
            .map(|c| CpuPlace {
                id: c.id,
                package: c.package.unwrap_or(0),
                core: c.core.unwrap_or(c.id as u32),
                numa_node: c.numa_node,
                siblings: if c.siblings.is_empty() {
                    c.id.to_string()
                } else {
                    cpu_list(&c.siblings)
                },
                allowed: m.allowed.contains(&c.id),
            })
            .collect();
        let core_set: BTreeSet<(u32, u32)> = cpus.iter().map(|c| (c.package, c.core)).collect();
        let allowed_cores: BTreeSet<(u32, u32)> = cpus
            .iter()
            .filter(|c| c.allowed)
            .map(|c| (c.package, c.core))
            .collect();
        let packages: BTreeSet<u32> = cpus.iter().map(|c| c.package).collect();
        let mut nodes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for c in &cpus {
            if let Some(n) = c.numa_node {
                nodes.entry(n).or_default().push(c.id);
            }
        }
        let caches = read_caches(&m.online);
        Ok(Topology {
            model: m.model,
            cpus_online: cpus.len(),
            packages: packages.len().max(1),
            cores: core_set.len().max(1),
            smt: core_set.len() < cpus.len(),
            allowed_cores: allowed_cores.len().max(1),
            allowed: m.allowed,
            numa_nodes: nodes
                .into_iter()
                .map(|(node, cpus)| NumaNode { node, cpus })
                .collect(),
            cpus,
            caches,
        })
    }

    fn allowed_places(&self) -> Vec<&CpuPlace> {
        let mut v: Vec<&CpuPlace> = self.cpus.iter().filter(|c| c.allowed).collect();
        if v.is_empty() {
            // /sys and sched_getaffinity disagree (containers): trust the
            // allowed set, with no topology.
            return Vec::new();
        }
        v.sort_by_key(|c| (c.package, c.core, c.id));
        v
    }

    /// Allowed CPUs with SMT siblings next to each other, package by package.
    pub(crate) fn compact_order(&self) -> Vec<usize> {
        let places = self.allowed_places();
        if places.is_empty() {
            return self.allowed.clone();
        }
        places.iter().map(|c| c.id).collect()
    }

    /// Allowed CPUs grouped as packages -> cores -> logical CPUs, each sorted.
    fn tree(&self) -> Vec<Vec<Vec<usize>>> {
        let mut tree: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
        for c in self.allowed_places() {
            tree.entry(c.package)
                .or_default()
                .entry(c.core)
                .or_default()
                .push(c.id);
        }
        tree.into_values()
            .map(|cores| cores.into_values().collect())
            .collect()
    }

    /// Allowed CPUs spread out: one per package in turn, then the next core
    /// of each package, and SMT siblings only after every core has one.
    pub(crate) fn scatter_order(&self) -> Vec<usize> {
        let tree = self.tree();
        if tree.is_empty() {
            return self.allowed.clone();
        }
        let max_threads = tree.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let max_cores = tree.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = Vec::new();
        for t in 0..max_threads {
            for c in 0..max_cores {
                for package in &tree {
                    if let Some(cpu) = package.get(c).and_then(|core| core.get(t)) {
                        out.push(*cpu);
                    }
                }
            }
        }
        out
    }

    /// One allowed CPU per physical core (the first of its siblings), package
    /// by package.
    pub(crate) fn one_per_core(&self) -> Vec<usize> {
        let tree = self.tree();
        if tree.is_empty() {
            return self.allowed.clone();
        }
        tree.iter()
            .flatten()
            .filter_map(|core| core.first().copied())
            .collect()
    }
}

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

pub(crate) const LAYOUT_HELP: &str =
    "none, per-cpu, compact, scatter, avoid-smt, or a CPU list such as 0,2-3";

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

/// Formats a sorted CPU list compactly: `0-3,8`.
pub(crate) fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i + 1 {
            out.push_str(&format!("{start}-{}", cpus[j]));
        } else if j == i + 1 {
            out.push_str(&format!("{start},{}", cpus[j]));
        } else {
            out.push_str(&start.to_string());
        }
        i = j + 1;
    }
    out
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
        if let Some(c) = &cpus {
            let distinct: BTreeSet<_> = c.iter().collect();
            if distinct.len() < c.len() && note.is_none() {
                note = Some(format!("{} workers share {} CPUs", c.len(), distinct.len()));
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

/// Prints the topology as tables.
pub(crate) fn print_topology(t: &Topology) {
    println!("CPU model:  {}", t.model);
    println!(
        "topology:   {} package(s), {} core(s), {} logical CPU(s){}, {} NUMA node(s)",
        t.packages,
        t.cores,
        t.cpus_online,
        if t.smt {
            ", SMT on"
        } else {
            ", no SMT siblings"
        },
        t.numa_nodes.len().max(1)
    );
    println!(
        "allowed:    {} ({} CPUs on {} core(s))",
        cpu_list(&t.allowed),
        t.allowed.len(),
        t.allowed_cores
    );
    println!();
    println!(
        "{:>4}  {:>7}  {:>4}  {:>12}  {:>4}  allowed",
        "cpu", "package", "core", "SMT siblings", "numa"
    );
    for c in &t.cpus {
        println!(
            "{:>4}  {:>7}  {:>4}  {:>12}  {:>4}  {}",
            c.id,
            c.package,
            c.core,
            c.siblings,
            c.numa_node.map_or("-".into(), |n| n.to_string()),
            if c.allowed { "yes" } else { "no" }
        );
    }
    if !t.numa_nodes.is_empty() {
        println!();
        for n in &t.numa_nodes {
            println!("NUMA node {}: CPUs {}", n.node, cpu_list(&n.cpus));
        }
    }
    if !t.caches.is_empty() {
        println!();
        println!(
            "{:<5} {:<12} {:>8} {:>9}  shared by",
            "cache", "type", "size", "instances"
        );
        for c in &t.caches {
            println!(
                "L{:<4} {:<12} {:>8} {:>9}  {}",
                c.level,
                c.kind,
                c.size,
                c.instances,
                c.shared_cpu_lists.join(" | ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: usize, package: u32, core: u32) -> CpuPlace {
        CpuPlace {
            id,
            package,
            core,
            numa_node: Some(package),
            siblings: String::new(),
            allowed: true,
        }
    }

    /// 2 packages x 2 cores x 2 threads, Intel numbering: siblings are n and n+4.
    fn two_socket_smt() -> Topology {
        let cpus = vec![
            place(0, 0, 0),
            place(1, 0, 1),
            place(2, 1, 0),
            place(3, 1, 1),
            place(4, 0, 0),
            place(5, 0, 1),
            place(6, 1, 0),
            place(7, 1, 1),
        ];
        Topology {
            model: "test".into(),
            cpus_online: 8,
            packages: 2,
            cores: 4,
            smt: true,
            allowed: (0..8).collect(),
            allowed_cores: 4,
            cpus,
            numa_nodes: Vec::new(),
            caches: Vec::new(),
        }
    }

    #[test]
    fn orders_on_a_two_socket_smt_machine() {
        let t = two_socket_smt();
        assert_eq!(t.compact_order(), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(t.scatter_order(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(t.one_per_core(), vec![0, 1, 2, 3]);
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
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10,11");
        assert_eq!(parse_size("32768K"), Some(32 << 20));
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
