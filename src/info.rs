//! What this machine offers: CPUs, the process's allowed set, and the topology
//! `/sys` describes. Used by `corepool info` and handy for choosing a
//! [`crate::Pinning`].
//!
//! ```
//! use corepool::{info, Pinning};
//!
//! // Pin workers to the allowed CPUs of one package (socket).
//! let m = info::machine()?;
//! let first = m.allowed[0];
//! let package = m.cpus.iter().find(|c| c.id == first).and_then(|c| c.package);
//! let cpus: Vec<usize> = m
//!     .cpus
//!     .iter()
//!     .filter(|c| m.allowed.contains(&c.id) && c.package == package)
//!     .map(|c| c.id)
//!     .collect();
//! assert!(cpus.contains(&first));
//! let pinning = Pinning::Cpus(cpus);
//! assert_ne!(pinning, Pinning::PerCpu);
//! # Ok::<(), corepool::Error>(())
//! ```

use crate::error::{Error, Result};
use std::fs;

/// One logical CPU as `/sys/devices/system/cpu` describes it.
///
/// ```
/// let m = corepool::info::machine()?;
/// for cpu in &m.cpus {
///     assert!(m.online.contains(&cpu.id));
///     // A CPU is one of its own SMT siblings (when the kernel lists them).
///     assert!(cpu.siblings.is_empty() || cpu.siblings.contains(&cpu.id));
/// }
/// # Ok::<(), corepool::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Cpu {
    /// Logical CPU number.
    pub id: usize,
    /// Physical package (socket), if known.
    pub package: Option<u32>,
    /// Core id within the package, if known.
    pub core: Option<u32>,
    /// Logical CPUs sharing this core (SMT siblings, this one included), in
    /// ascending order; empty when the kernel does not say.
    pub siblings: Vec<usize>,
    /// NUMA node, if known.
    pub numa_node: Option<u32>,
}

/// The logical CPUs sharing `cpu`'s core (its SMT siblings, itself
/// included), ascending; empty when the kernel does not say.
pub(crate) fn siblings_of(cpu: usize) -> Vec<usize> {
    read_trim(&format!(
        "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
    ))
    .and_then(|list| parse_cpu_list(&list))
    .unwrap_or_default()
}

/// The machine as seen from this process.
///
/// ```
/// let m = corepool::info::machine()?;
/// assert!(!m.allowed.is_empty());
/// assert_eq!(m.allowed, corepool::info::allowed_cpus()?);
/// assert_eq!(m.cpus.len(), m.online.len());
/// # Ok::<(), corepool::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Machine {
    /// The CPU model name from `/proc/cpuinfo`.
    pub model: String,
    /// Logical CPUs online.
    pub online: Vec<usize>,
    /// CPUs this process may run on (`sched_getaffinity`).
    pub allowed: Vec<usize>,
    /// Topology of each online CPU.
    pub cpus: Vec<Cpu>,
}

/// The CPUs this process may run on (respects `taskset` and cgroup cpusets).
/// Read from the calling thread: after [`pin_current_thread`], it is that
/// one CPU.
///
/// ```
/// assert!(!corepool::info::allowed_cpus().unwrap().is_empty());
/// ```
///
/// # Errors
///
/// [`Error::Os`] if `sched_getaffinity` fails.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    crate::sys::affinity_of(0).map_err(|e| Error::os("sched_getaffinity", e))
}

/// The CPUs process `pid` may run on: read a worker's pinning back.
///
/// ```
/// let me = std::process::id() as i32;
/// assert_eq!(corepool::info::affinity_of(me).unwrap(), corepool::info::allowed_cpus().unwrap());
/// ```
///
/// # Errors
///
/// [`Error::Os`] if the process does not exist or may not be inspected.
pub fn affinity_of(pid: i32) -> Result<Vec<usize>> {
    crate::sys::affinity_of(pid).map_err(|e| Error::os("sched_getaffinity", e))
}

/// Pins the calling thread to `cpu` (for example the thread that talks to a
/// pinned worker, so that the two never share a core).
///
/// ```
/// let cpu = corepool::info::allowed_cpus().unwrap()[0];
/// std::thread::spawn(move || {
///     corepool::info::pin_current_thread(cpu).unwrap();
///     assert_eq!(corepool::info::current_cpu(), Some(cpu));
/// })
/// .join()
/// .unwrap();
/// ```
///
/// # Errors
///
/// [`Error::CpuNotAllowed`] outside the allowed set; [`Error::PinFailed`] if
/// the kernel refuses.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let allowed = allowed_cpus()?;
    if !allowed.contains(&cpu) {
        return Err(Error::CpuNotAllowed { cpu, allowed });
    }
    crate::sys::pin_self_to(&crate::sys::CpuMask::of(&[cpu]))
        .map_err(|e| Error::PinFailed { cpu, source: e })
}

/// The CPU the calling thread runs on now.
///
/// ```
/// assert!(corepool::info::current_cpu().is_some());
/// ```
pub fn current_cpu() -> Option<usize> {
    crate::sys::current_cpu()
}

/// This machine's physical memory in bytes (`sysconf(_SC_PHYS_PAGES)` times
/// the page size), `None` if the system does not say. The whole machine's,
/// not what a cgroup or `ulimit -v` leaves this process: a bound on what any
/// one allocation here can ever get, such as a sanity cap on a length that
/// another process or machine announces before sending that many bytes.
///
/// ```
/// let bytes = corepool::info::physical_memory().expect("Linux says");
/// assert!(bytes >= 1 << 20, "at least a megabyte: {bytes}");
/// ```
pub fn physical_memory() -> Option<u64> {
    crate::sys::physical_memory()
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
///
/// ```
/// assert_eq!(corepool::info::parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
/// assert_eq!(corepool::info::parse_cpu_list("x"), None);
/// ```
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn numa_node_of(cpu: usize) -> Option<u32> {
    let dir = fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("node").and_then(|n| n.parse().ok()))
        })
        .next()
}

/// Describes this machine.
///
/// ```
/// let m = corepool::info::machine().unwrap();
/// assert!(m.allowed.iter().all(|c| m.online.contains(c)));
/// ```
///
/// # Errors
///
/// [`Error::Os`] if the allowed set cannot be read.
pub fn machine() -> Result<Machine> {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let allowed = allowed_cpus()?;
    let online = read_trim("/sys/devices/system/cpu/online")
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_else(|| allowed.clone());
    let cpus = online
        .iter()
        .map(|&id| {
            let base = format!("/sys/devices/system/cpu/cpu{id}/topology");
            Cpu {
                id,
                package: read_trim(&format!("{base}/physical_package_id"))
                    .and_then(|s| s.parse().ok()),
                core: read_trim(&format!("{base}/core_id")).and_then(|s| s.parse().ok()),
                siblings: siblings_of(id),
                numa_node: numa_node_of(id),
            }
        })
        .collect();
    Ok(Machine {
        model,
        online,
        allowed,
        cpus,
    })
}
