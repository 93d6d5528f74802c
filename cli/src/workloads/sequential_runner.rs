//! The workloads that have a meaningful sequential baseline (`map`,
//! `cpu_loop`, `shared_sum`), run on the calling thread alone.

use super::tasks::{check, count, loop_parts, noop, partial_sum};
use super::{Inputs, Sample, Sizes, Workload};
use crate::CliError;
use std::time::Instant;

/// One sequential run on the calling thread, for the workloads where that
/// is a meaningful baseline.
pub(crate) fn sequential_once(
    w: Workload,
    sizes: &Sizes,
    inputs: &mut Inputs,
    tasks: usize,
) -> Option<Result<Sample, CliError>> {
    let n = sizes.get(w);
    match w {
        Workload::Map => {
            let input = inputs.map_input(n);
            let t = Instant::now();
            let out: Vec<u64> = input
                .iter()
                .map(|&x| std::hint::black_box(noop(x)))
                .collect();
            let s = Sample::rate(n, t.elapsed());
            Some(check(out == input, "sequential map").map(|()| s))
        }
        Workload::CpuLoop => {
            let parts = loop_parts(n, tasks);
            let t = Instant::now();
            let total: u64 = parts.iter().map(|&p| count(p)).sum();
            let s = Sample::rate(n, t.elapsed());
            Some(check(total == n, "sequential cpu_loop").map(|()| s))
        }
        Workload::SharedSum => Some((|| {
            let a = inputs.array(n)?;
            let t = Instant::now();
            let total = partial_sum((a, 0, n));
            let s = Sample::rate(n, t.elapsed());
            check(total == n as f64, "sequential shared_sum")?;
            Ok(s)
        })()),
        Workload::ApplyAsync
        | Workload::Latency
        | Workload::Queue
        | Workload::PipeRtt
        | Workload::Start
        | Workload::Respawn
        | Workload::Bulk
        | Workload::BulkShared => None,
    }
}
