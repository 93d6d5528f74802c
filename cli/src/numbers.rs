//! Command-line values that clap alone reports badly: counts (`--size`,
//! `--workers`, ...), whose negative numbers are reported as out of range
//! (clap otherwise takes `-1` for an unknown flag: "unexpected argument
//! '-1'"), and the "did you mean" for a near-miss workload name.

use std::str::FromStr;

/// Whether `s` is a negative integer (`-1`, `-20`).
fn is_negative(s: &str) -> bool {
    s.strip_prefix('-')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A count that must be at least 1 (zero is left to the command's own
/// check, which names the option).
pub(crate) fn at_least_one<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    if is_negative(s) {
        return Err("must be at least 1".into());
    }
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// The most workers one pool may have: the library's limit, which it
/// reports as an invalid configuration only once the run has begun; the
/// command refuses more before anything runs (a test checks the two agree).
pub(crate) const MAX_WORKERS: usize = 4096;

/// The message for a worker count above [`MAX_WORKERS`].
pub(crate) fn too_many_workers(n: usize) -> String {
    format!("{n} workers is more than corepool's limit of {MAX_WORKERS} per pool: give at most {MAX_WORKERS}")
}

/// A worker count (`--workers`): 1 to [`MAX_WORKERS`].
pub(crate) fn worker_count(s: &str) -> Result<usize, String> {
    let n: usize = at_least_one(s)?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > MAX_WORKERS {
        return Err(format!(
            "must be at most {MAX_WORKERS}, corepool's limit of workers per pool"
        ));
    }
    Ok(n)
}

/// A count that may be 0.
pub(crate) fn zero_or_more<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    if is_negative(s) {
        return Err("must be 0 or more".into());
    }
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// The names in `choices` closest to `given` (a `-` for `_` counts as no
/// difference, then at most two edits), for a "did you mean".
pub(crate) fn did_you_mean<'a>(given: &str, choices: &[&'a str]) -> Option<&'a str> {
    let given = given.trim().to_ascii_lowercase().replace('-', "_");
    if given.is_empty() {
        return None;
    }
    choices
        .iter()
        .map(|&c| (edit_distance(&given, c), c))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<u8> = b.bytes().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negatives_are_out_of_range() {
        assert_eq!(at_least_one::<u64>("-1").unwrap_err(), "must be at least 1");
        assert_eq!(zero_or_more::<u32>("-2").unwrap_err(), "must be 0 or more");
        assert_eq!(at_least_one::<usize>("7").unwrap(), 7);
        assert!(at_least_one::<u64>("x").is_err());
    }

    #[test]
    fn worker_counts_stop_at_the_librarys_limit() {
        assert_eq!(worker_count("1").unwrap(), 1);
        assert_eq!(worker_count(&MAX_WORKERS.to_string()).unwrap(), MAX_WORKERS);
        assert!(worker_count("0").unwrap_err().contains("at least 1"));
        assert!(worker_count("-3").unwrap_err().contains("at least 1"));
        let err = worker_count(&(MAX_WORKERS + 1).to_string()).unwrap_err();
        assert!(err.contains("at most 4096"), "{err}");
        // The library refuses one more than our limit, before starting any
        // worker: the two limits agree.
        let lib = corepool::Pool::builder()
            .workers(MAX_WORKERS + 1)
            .build()
            .unwrap_err()
            .to_string();
        assert!(lib.contains(&format!("use 1 to {MAX_WORKERS}")), "{lib}");
    }

    #[test]
    fn near_misses_are_suggested() {
        let names = ["apply_async", "map", "latency"];
        assert_eq!(did_you_mean("apply-async", &names), Some("apply_async"));
        assert_eq!(did_you_mean("latncy", &names), Some("latency"));
        assert_eq!(did_you_mean("nope", &names), None);
        assert_eq!(did_you_mean("", &names), None);
    }
}
