//! `corepool info`.

use crate::output::outln;
use crate::CliError;
use corepool::info;

pub(crate) fn run(json: bool) -> Result<(), CliError> {
    let m = info::machine()?;
    if json {
        outln!("{}", serde_json::to_string(&m).unwrap_or_default())?;
        return Ok(());
    }
    outln!("CPU model:    {}", m.model)?;
    outln!("online CPUs:  {} ({:?})", m.online.len(), m.online)?;
    outln!(
        "allowed set:  {} ({:?})  <- the default pool runs one pinned worker on each",
        m.allowed.len(),
        m.allowed
    )?;
    outln!()?;
    outln!(
        "{:>4}  {:>7}  {:>4}  {:>9}  {:>4}  allowed",
        "cpu",
        "package",
        "core",
        "siblings",
        "numa"
    )?;
    for c in &m.cpus {
        let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        outln!(
            "{:>4}  {:>7}  {:>4}  {:>9}  {:>4}  {}",
            c.id,
            show(c.package),
            show(c.core),
            if c.siblings.is_empty() {
                "-".to_string()
            } else {
                crate::topo::cpu_list(&c.siblings)
            },
            show(c.numa_node),
            if m.allowed.contains(&c.id) {
                "yes"
            } else {
                "no"
            }
        )?;
    }
    Ok(())
}
