//! Summaries of repeated measurements: their median, min and max, and how
//! a range of them is written.

/// Median, min and max of some samples (NaN-free; an empty set is all 0).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Summary {
    pub(crate) fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Median of integer samples (nanoseconds), as f64.
pub(crate) fn median_u64(mut samples: Vec<u64>) -> f64 {
    samples.sort_unstable();
    let n = samples.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => samples[n / 2] as f64,
        _ => (samples[n / 2 - 1] as f64 + samples[n / 2] as f64) / 2.0,
    }
}

/// `1.17-1.68M` (in the magnitude of `median`), or `611-700` for ns.
pub(crate) fn range_of(min: f64, max: f64, median: f64, unit: &str) -> String {
    if unit == "ns" {
        return format!("{min:.0}-{max:.0}");
    }
    if unit == "ms" {
        return format!("{min:.2}-{max:.2}");
    }
    let (div, suffix) = match median {
        x if x >= 1e9 => (1e9, "G"),
        x if x >= 1e6 => (1e6, "M"),
        x if x >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let digits = if div >= 1e6 { 2 } else { 0 };
    format!("{:.*}-{:.*}{suffix}", digits, min / div, digits, max / div)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(Summary::of(&[]).median, 0.0);
        assert_eq!(median_u64(vec![5, 1, 9]), 5.0);
    }
}
