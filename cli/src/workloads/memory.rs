//! What a run's sizes need in memory, checked before anything is allocated
//! against what the machine has: an oversized `--size` is refused with a
//! message naming it, rather than ending in an allocation failure's abort.

use super::{Sizes, Workload};
use crate::CliError;

/// Bytes each item of `w` holds while its rows are measured (for the
/// largest of its systems, with room to spare: the check refuses only what
/// cannot fit, it does not budget). Zero for workloads that keep nothing
/// per item (cpu_loop's iterations, queue's streamed messages) and for those
/// whose sizes are fixed (start, respawn, bulk: `--size` does not set them).
fn bytes_per_item(w: Workload) -> u64 {
    match w {
        // A result handle per task in flight on corepool, a result slot per
        // task on threads.
        Workload::ApplyAsync => 256,
        // The input `0..n`, and each system's output beside it.
        Workload::Map => 32,
        // One u64 sample per round trip, and the copy the median sorts.
        Workload::Latency | Workload::PipeRtt => 16,
        // One f64 per element, in shared memory.
        Workload::SharedSum => 8,
        Workload::CpuLoop
        | Workload::Queue
        | Workload::Start
        | Workload::Respawn
        | Workload::Bulk
        | Workload::BulkShared => 0,
    }
}

/// The memory the largest of `selected` needs at `sizes` (workloads run one
/// at a time, each freeing its data before the next), and which one it is.
fn largest_need(sizes: &Sizes, selected: &[Workload]) -> Option<(Workload, u64)> {
    selected
        .iter()
        .map(|&w| (w, sizes.get(w).saturating_mul(bytes_per_item(w))))
        .max_by_key(|&(_, bytes)| bytes)
        .filter(|&(_, bytes)| bytes > 0)
}

/// Bytes this process may still allocate: the kernel's estimate of
/// available memory (`MemAvailable`), capped by the address-space limit
/// (`ulimit -v`) when there is one. `None` when neither can be read.
fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let mem_available = meminfo.as_deref().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib.saturating_mul(1024))
    });
    match (mem_available, crate::sys::address_space_limit()) {
        (Some(m), Some(l)) => Some(m.min(l)),
        (m, l) => m.or(l),
    }
}

/// `bytes` for a person: GiB or MiB with one decimal.
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// Refuses sizes whose run cannot fit in the memory this process may use.
/// `size` is the `--size` given, if any, to name in the message.
pub(crate) fn check_fits(
    sizes: &Sizes,
    selected: &[Workload],
    size: Option<u64>,
) -> Result<(), CliError> {
    let Some(avail) = available() else {
        return Ok(()); // nothing to check against: let the run try
    };
    check_fits_in(sizes, selected, size, avail)
}

fn check_fits_in(
    sizes: &Sizes,
    selected: &[Workload],
    size: Option<u64>,
    avail: u64,
) -> Result<(), CliError> {
    let Some((w, need)) = largest_need(sizes, selected) else {
        return Ok(());
    };
    if need <= avail {
        return Ok(());
    }
    let asked = match size {
        Some(n) => format!("--size {n}"),
        None => format!("the default size ({})", sizes.get(w)),
    };
    Err(CliError::TooLarge(format!(
        "{asked} needs about {} for {} ({} bytes per item); this process has {} available: give a smaller --size",
        if need == u64::MAX {
            "more memory than any machine has".to_string()
        } else {
            human_bytes(need)
        },
        w.name(),
        bytes_per_item(w),
        human_bytes(avail)
    )))
}

/// The message for a shared_sum array that could not be made: names
/// `--size`, the knob the user has, not the library's.
pub(crate) fn array_failed(len: u64, e: &corepool::Error) -> CliError {
    CliError::TooLarge(format!(
        "the shared_sum array of {len} elements ({}) could not be made ({e}): give a smaller --size",
        human_bytes(len.saturating_mul(8))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_size_is_refused_naming_size() {
        let mut sizes = Sizes::quick();
        sizes.set(Workload::Map, u64::MAX);
        let err = check_fits_in(&sizes, &[Workload::Map], Some(u64::MAX), 1 << 30)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("--size 18446744073709551615"), "{err}");
        assert!(err.contains("map"), "{err}");
        sizes.set(Workload::Map, 3_000_000_000);
        let err = check_fits_in(&sizes, &[Workload::Map], Some(3_000_000_000), 4 << 30)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("89.4 GiB"), "{err}");
        assert!(err.contains("4.0 GiB available"), "{err}");
    }

    #[test]
    fn what_fits_or_keeps_nothing_per_item_passes() {
        let mut sizes = Sizes::quick();
        check_fits_in(&sizes, &super::super::WORKLOADS, None, 1 << 30).unwrap();
        sizes.set(Workload::CpuLoop, u64::MAX);
        sizes.set(Workload::Queue, u64::MAX);
        check_fits_in(&sizes, &[Workload::CpuLoop, Workload::Queue], None, 1).unwrap();
    }
}
