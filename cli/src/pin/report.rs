//! `corepool pin`'s table: every layout's runs against the chosen one, the
//! notes, and the recommendation with the `Pool::builder()` line to use.

use super::recommend::Report;
use crate::output::outln;
use crate::stats::range_of;
use crate::topo::cpu_list;
use crate::CliError;

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

pub(super) fn print_report(r: &Report) -> Result<(), CliError> {
    outln!()?;
    outln!(
        "{:<14} {:>7} {:<10} {:>18} {:>18} {:>10}",
        "layout",
        "workers",
        "CPUs",
        "median",
        "range",
        "vs chosen"
    )?;
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
        outln!(
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
        )?;
    }
    outln!()?;
    outln!(
        "vs chosen: each layout's median against the chosen placement's (all runs of its identical layouts together); {}",
        if r.lower_is_better {
            "negative = slower round trips"
        } else {
            "negative = less throughput"
        }
    )?;
    for n in &r.notes {
        outln!("note: {n}")?;
    }
    outln!()?;
    outln!("recommendation: {}", r.recommendation.summary)?;
    outln!("  {}", r.recommendation.builder)
}
