//! The machine's topology as `/sys` tells it (packages, cores, SMT siblings,
//! NUMA nodes, caches): read, ordered for placing workers, and printed.
//! [`layout`] turns it into the placements `corepool pin` and
//! `corepool bench --pinning` use.

mod layout;

pub(crate) use layout::{Layout, Placement};

use crate::output::outln;
use crate::CliError;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;

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
    /// Whether `/sys` told every CPU's package and core. When it does not
    /// (a container masking `/sys/devices/system/cpu`), packages, cores and
    /// `smt` are a guess (one CPU per core, one package), and are said to be.
    #[serde(rename = "topology_known")]
    pub(crate) known: bool,
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
        let known = m
            .cpus
            .iter()
            .all(|c| c.package.is_some() && c.core.is_some());
        Ok(Topology {
            known,
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
    fn compact_order(&self) -> Vec<usize> {
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
    fn scatter_order(&self) -> Vec<usize> {
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
    fn one_per_core(&self) -> Vec<usize> {
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

impl Topology {
    /// The topology in one line; when `/sys` did not tell it, says so
    /// rather than state the guess as fact.
    pub(crate) fn shape(&self) -> String {
        if !self.known {
            return format!(
                "unknown (/sys/devices/system/cpu does not describe it): {} logical CPU(s), assumed one per core",
                self.cpus_online
            );
        }
        format!(
            "{} package(s), {} core(s), {} logical CPU(s){}, {}",
            self.packages,
            self.cores,
            self.cpus_online,
            if self.smt {
                ", SMT on"
            } else {
                ", no SMT siblings"
            },
            if self.numa_nodes.is_empty() {
                "NUMA nodes unknown".to_string()
            } else {
                format!("{} NUMA node(s)", self.numa_nodes.len())
            }
        )
    }
}

/// Prints the topology as tables.
pub(crate) fn print_topology(t: &Topology) -> Result<(), CliError> {
    outln!("CPU model:  {}", t.model)?;
    outln!("topology:   {}", t.shape())?;
    outln!(
        "allowed:    {} ({} on {})",
        cpu_list(&t.allowed),
        crate::output::count(t.allowed.len(), "CPU", "CPUs"),
        crate::output::count(t.allowed_cores, "core", "cores")
    )?;
    outln!()?;
    outln!(
        "{:>4}  {:>7}  {:>4}  {:>12}  {:>4}  allowed",
        "cpu",
        "package",
        "core",
        "SMT siblings",
        "numa"
    )?;
    // Unknown places are `-`, as `corepool info` shows them.
    let place = |v: String| if t.known { v } else { "-".into() };
    for c in &t.cpus {
        outln!(
            "{:>4}  {:>7}  {:>4}  {:>12}  {:>4}  {}",
            c.id,
            place(c.package.to_string()),
            place(c.core.to_string()),
            place(c.siblings.clone()),
            c.numa_node.map_or("-".into(), |n| n.to_string()),
            if c.allowed { "yes" } else { "no" }
        )?;
    }
    if !t.numa_nodes.is_empty() {
        outln!()?;
        for n in &t.numa_nodes {
            outln!("NUMA node {}: CPUs {}", n.node, cpu_list(&n.cpus))?;
        }
    }
    if !t.caches.is_empty() {
        outln!()?;
        outln!(
            "{:<5} {:<12} {:>8} {:>9}  shared by",
            "cache",
            "type",
            "size",
            "instances"
        )?;
        for c in &t.caches {
            outln!(
                "L{:<4} {:<12} {:>8} {:>9}  {}",
                c.level,
                c.kind,
                c.size,
                c.instances,
                c.shared_cpu_lists.join(" | ")
            )?;
        }
    }
    Ok(())
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
    pub(super) fn two_socket_smt() -> Topology {
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
            known: true,
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
    }

    #[test]
    fn cpu_lists_and_cache_sizes() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10,11");
        assert_eq!(parse_size("32768K"), Some(32 << 20));
    }
}
