//! Per-sample timings a bench records from criterion's `iter_custom`, so it can print its own
//! summary (achieved GB/s next to the machine's bandwidth) without parsing criterion's files.
//!
//! Must not know: what was measured; it holds `(iterations, elapsed)` pairs only.

use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct Timings {
    samples: Vec<(u64, Duration)>,
}

impl Timings {
    /// One criterion sample: `iters` runs took `elapsed` in total.
    pub fn record(&mut self, iters: u64, elapsed: Duration) {
        if iters > 0 {
            self.samples.push((iters, elapsed));
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Median time of one iteration over the last `last` samples. Criterion's warm-up calls come
    /// first, so passing the group's sample size keeps only the measurement. None when nothing
    /// was recorded (the bench was filtered out).
    pub fn median_per_iter(&self, last: usize) -> Option<Duration> {
        let start = self.samples.len().saturating_sub(last);
        let mut per_iter: Vec<f64> =
            self.samples[start..].iter().map(|(n, d)| d.as_secs_f64() / *n as f64).collect();
        if per_iter.is_empty() {
            return None;
        }
        per_iter.sort_by(f64::total_cmp);
        let mid = per_iter.len() / 2;
        let median =
            if per_iter.len() % 2 == 1 { per_iter[mid] } else { (per_iter[mid - 1] + per_iter[mid]) / 2.0 };
        Some(Duration::from_secs_f64(median))
    }
}

/// Decimal gigabytes per second (1 GB = 1e9 bytes, as memory bandwidth is usually quoted).
pub fn gb_per_s(bytes: u64, per_iter: Duration) -> f64 {
    bytes as f64 / per_iter.as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_uses_only_the_last_samples_and_divides_by_iterations() {
        let mut t = Timings::default();
        t.record(1, Duration::from_secs(100)); // a warm-up call, to be ignored
        t.record(2, Duration::from_millis(20)); // 10 ms per iteration
        t.record(4, Duration::from_millis(120)); // 30 ms
        t.record(1, Duration::from_millis(20)); // 20 ms
        assert_eq!(t.median_per_iter(3), Some(Duration::from_millis(20)));
        assert_eq!(t.median_per_iter(2), Some(Duration::from_millis(25)));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn no_samples_means_no_median_and_zero_iterations_are_ignored() {
        let mut t = Timings::default();
        assert_eq!(t.median_per_iter(10), None);
        t.record(0, Duration::from_secs(1));
        assert!(t.is_empty());
    }

    #[test]
    fn gb_per_s_is_decimal() {
        assert_eq!(gb_per_s(2_000_000_000, Duration::from_secs(1)), 2.0);
        assert_eq!(gb_per_s(1_000_000, Duration::from_millis(1)), 1.0);
    }
}
