//! Summary statistics over one metric's samples, defined exactly as `vllm bench serve` computes
//! them with numpy: mean, population standard deviation (`np.std`, ddof 0), median, and
//! percentiles by linear interpolation between the two closest ranks (`np.percentile`'s default
//! method). An empty sample summarizes to zeros, as vLLM's `np.mean(xs or 0)` does, so a run in
//! which every request failed still prints a complete block.
//!
//! Must not know: which metric the samples are, or their unit.

/// Mean, spread and chosen percentiles of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    /// `(p, value)` for every requested percentile, in the order requested.
    pub percentiles: Vec<(f64, f64)>,
}

pub fn summarize(samples: &[f64], percentiles: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Summary {
        mean: mean(samples),
        median: percentile_of_sorted(&sorted, 50.0),
        std: population_std(samples),
        percentiles: percentiles.iter().map(|&p| (p, percentile_of_sorted(&sorted, p))).collect(),
    }
}

impl Summary {
    /// Every value multiplied by `factor` (seconds to milliseconds).
    pub fn scaled(&self, factor: f64) -> Summary {
        Summary {
            mean: self.mean * factor,
            median: self.median * factor,
            std: self.std * factor,
            percentiles: self.percentiles.iter().map(|&(p, v)| (p, v * factor)).collect(),
        }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Divides by n (numpy's default), as vLLM's saved `std_*_ms`.
pub fn population_std(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// Divides by n − 1, as llama-bench's `± stdev` over repetitions; 0 for fewer than two samples.
pub fn sample_std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// numpy's "linear" method: the value at fractional rank `p/100 · (n − 1)` of the sorted
/// samples, interpolated between its two neighbours.
fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_linearly_between_ranks_like_numpy() {
        // np.percentile([1, 2, 3, 4, 10], [50, 90, 99]) == [3.0, 7.6, 9.76]
        let s = summarize(&[10.0, 1.0, 4.0, 2.0, 3.0], &[50.0, 90.0, 99.0]);
        assert!(close(s.median, 3.0));
        assert!(close(s.percentiles[0].1, 3.0));
        assert!(close(s.percentiles[1].1, 7.6), "{:?}", s.percentiles);
        assert!(close(s.percentiles[2].1, 9.76), "{:?}", s.percentiles);
        assert_eq!(s.percentiles[1].0, 90.0);
    }

    #[test]
    fn median_of_an_even_count_is_the_midpoint() {
        assert!(close(summarize(&[4.0, 1.0, 3.0, 2.0], &[]).median, 2.5));
    }

    #[test]
    fn std_is_the_population_std_and_sample_std_divides_by_n_minus_one() {
        // np.std([2, 4, 4, 4, 5, 5, 7, 9]) == 2.0; with ddof=1: sqrt(32/7)
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!(close(summarize(&xs, &[]).std, 2.0));
        assert!(close(sample_std(&xs), (32.0f64 / 7.0).sqrt()));
        assert!(close(mean(&xs), 5.0));
    }

    #[test]
    fn empty_samples_summarize_to_zero_instead_of_nan() {
        let s = summarize(&[], &[99.0]);
        assert_eq!((s.mean, s.median, s.std, s.percentiles[0].1), (0.0, 0.0, 0.0, 0.0));
        assert_eq!(sample_std(&[3.0]), 0.0);
    }

    #[test]
    fn scaling_converts_every_field() {
        let s = summarize(&[0.001, 0.003], &[99.0]).scaled(1000.0);
        assert!(close(s.mean, 2.0) && close(s.median, 2.0) && close(s.std, 1.0));
        assert!(close(s.percentiles[0].1, 2.98));
    }
}
