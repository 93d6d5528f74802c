//! A library that uses corepool, as any crate might: its functions build
//! pools, and its own unit tests and doc tests run them under the standard
//! test harness, with no `main` and no `corepool::init()`. Workers are the
//! test binary re-executed; they are recognised before libtest's `main`, so
//! they never run the test suite.

use corepool::{Pool, Process};

fn square(x: u64) -> u64 {
    x * x
}

fn digit_sum(x: u64) -> u64 {
    x.to_string().bytes().map(|b| u64::from(b - b'0')).sum()
}

/// The sum of the squares of `0..n`, computed by a pool of `workers`.
///
/// ```
/// assert_eq!(corepool_lib_user::sum_of_squares(10, 2)?, 285);
/// # Ok::<(), corepool::Error>(())
/// ```
///
/// # Errors
///
/// Whatever building the pool or running its tasks reports.
pub fn sum_of_squares(n: u64, workers: usize) -> corepool::Result<u64> {
    let pool = Pool::new(workers)?;
    Ok(pool.map(square, 0..n)?.into_iter().sum())
}

/// The sum of the decimal digits of `x`, computed in a process of its own.
///
/// ```
/// assert_eq!(corepool_lib_user::digit_sum_elsewhere(1234)?, 10);
/// # Ok::<(), corepool::Error>(())
/// ```
///
/// # Errors
///
/// Whatever starting the process or joining it reports.
pub fn digit_sum_elsewhere(x: u64) -> corepool::Result<u64> {
    Process::start(digit_sum, x)?.join()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_in_a_unit_test() {
        assert_eq!(sum_of_squares(100, 2).unwrap(), 328_350);
    }

    #[test]
    fn a_process_in_a_unit_test() {
        assert_eq!(digit_sum_elsewhere(99_999).unwrap(), 45);
    }

    #[test]
    fn a_pool_built_here_runs_a_closure() {
        let pool = Pool::new(1).unwrap();
        assert_eq!(
            pool.apply(|s: String| s.len() as u64, "four".into())
                .unwrap(),
            4
        );
    }
}
