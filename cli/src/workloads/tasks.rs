//! The work itself, the same on every system: the functions a task runs
//! and the checks that a run's answer is right.

use crate::CliError;
use corepool::SharedArray;

pub(super) fn noop(x: u64) -> u64 {
    x
}

/// The pid of the process that runs the task.
pub(super) fn own_pid(_: ()) -> u32 {
    std::process::id()
}

/// The seed's loop: `x = x + 1`, n times.
pub(super) fn count(n: u64) -> u64 {
    let mut x = 0u64;
    for _ in 0..n {
        x = std::hint::black_box(x + 1);
    }
    x
}

pub(super) fn partial_sum(arg: (SharedArray<f64>, u64, u64)) -> f64 {
    let (a, start, end) = arg;
    a.fold_chunks(start as usize..end as usize, 0.0, |s, xs| {
        s + xs.iter().sum::<f64>()
    })
    .unwrap_or(f64::NAN)
}

pub(super) fn check(ok: bool, what: &str) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::Wrong(what.to_string()))
    }
}

/// 0 + 1 + ... + (n - 1), wrapping as the checked sums do.
pub(super) fn triangle(n: u64) -> u64 {
    (u128::from(n) * u128::from(n.saturating_sub(1)) / 2) as u64
}

/// `tasks` loop tasks that together count to `total`.
pub(super) fn loop_parts(total: u64, tasks: usize) -> Vec<u64> {
    // In u128: `total * (i + 1)` overflows u64 for a --size near u64::MAX.
    let (total, tasks) = (u128::from(total), tasks.max(1) as u128);
    (0..tasks)
        .map(|i| (total * (i + 1) / tasks - total * i / tasks) as u64)
        .collect()
}

/// `parts` ranges covering the first `len` elements of `a`.
pub(super) fn sum_ranges(
    a: &SharedArray<f64>,
    len: u64,
    parts: usize,
) -> Vec<(SharedArray<f64>, u64, u64)> {
    let len = len as usize;
    (0..parts)
        .map(|p| {
            (
                a.clone(),
                (len * p / parts) as u64,
                (len * (p + 1) / parts) as u64,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_numbers() {
        assert_eq!(triangle(0), 0);
        assert_eq!(triangle(5), 10);
        assert_eq!(
            triangle(1 << 33),
            ((1u128 << 33) * ((1u128 << 33) - 1) / 2) as u64
        );
    }

    #[test]
    fn loop_parts_add_up() {
        assert_eq!(loop_parts(10, 3).iter().sum::<u64>(), 10);
        assert_eq!(loop_parts(10, 3).len(), 3);
        assert_eq!(loop_parts(7, 0), vec![7]);
        // Any --size is accepted: the largest splits without overflow.
        let parts = loop_parts(u64::MAX, 3);
        assert_eq!(
            parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
            u128::from(u64::MAX)
        );
    }
}
