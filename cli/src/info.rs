//! `corepool info`.

use corepool::info;

pub(crate) fn run(json: bool) -> Result<(), corepool::Error> {
    let m = info::machine()?;
    if json {
        println!("{}", serde_json::to_string(&m).unwrap_or_default());
        return Ok(());
    }
    println!("CPU model:    {}", m.model);
    println!("online CPUs:  {} ({:?})", m.online.len(), m.online);
    println!(
        "allowed set:  {} ({:?})  <- the default pool runs one pinned worker on each",
        m.allowed.len(),
        m.allowed
    );
    println!();
    println!(
        "{:>4}  {:>7}  {:>4}  {:>9}  {:>4}  allowed",
        "cpu", "package", "core", "siblings", "numa"
    );
    for c in &m.cpus {
        let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
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
        );
    }
    Ok(())
}
