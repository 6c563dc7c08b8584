//! "Past": the window of recent output lengths and the conditional length sampler.
//!
//! Owns: the sliding window (with finish reasons), its censoring-aware empirical distribution,
//! and sampling a request's final output length given what it has generated so far. Must not
//! know about blocks, requests or admission.
//!
//! Sampling follows the LightLLM Past-Future artifact: the conditional tail of the window above
//! the generated length g is turned into a piecewise-linear CDF whose knots are `g` (at 0), each
//! window length above g, and the request's maximum M as one extra interval (a pessimistic
//! smoothing: there is always mass up to M). A sample is the inverse CDF at a uniform point.
//!
//! Departure from the artifact (which records every length as exact): a length that ended at the
//! length cap or by abort is a right-censored observation ("at least c"). Such a sample gets no
//! mass of its own; its weight is handed in equal shares to every sample above it (Efron's
//! redistribute-to-the-right, i.e. the Kaplan–Meier estimate), and to M if nothing is above. So a
//! window full of `max_tokens = 50` requests does not teach the scheduler that outputs are short.
//! Lengths at or above the asking request's own M are exact for it (it stops at M anyway).

use std::collections::VecDeque;

use rand::Rng;

use crate::error::{Result, SchedulerError};
use crate::view::FinishKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    len: usize,
    censored: bool,
}

/// The last `window` finished output lengths.
#[derive(Debug, Clone)]
pub struct OutputHistory {
    window: usize,
    samples: VecDeque<Sample>,
}

impl OutputHistory {
    /// A window of `window` lengths, seeded with `window / 2` copies of `seed_len` (the maximum
    /// output), so the scheduler starts out pessimistic and relaxes as real lengths arrive.
    pub fn new(window: usize, seed_len: usize) -> Result<Self> {
        if window == 0 {
            return Err(SchedulerError::InvalidConfig("history window must be positive".into()));
        }
        let seed = Sample { len: seed_len, censored: false };
        Ok(Self { window, samples: std::iter::repeat_n(seed, (window / 2).max(1)).collect() })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Records a finished request. A censored length of 0 carries no information and would only
    /// push real samples out of the window, so it is dropped.
    pub fn record(&mut self, output_len: usize, kind: FinishKind) {
        let censored = kind != FinishKind::Stop;
        if censored && output_len == 0 {
            return;
        }
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { len: output_len, censored });
    }

    /// The window sorted for repeated tail queries (exact before censored on ties, as in KM).
    pub fn snapshot(&self) -> HistorySnapshot {
        let mut sorted: Vec<Sample> = self.samples.iter().copied().collect();
        sorted.sort_unstable_by_key(|s| (s.len, s.censored));
        HistorySnapshot { sorted }
    }
}

/// A sorted copy of the window; cheap to query many times within one scheduling round.
#[derive(Debug, Clone)]
pub struct HistorySnapshot {
    sorted: Vec<Sample>,
}

/// The conditional distribution of the final output length L given L > g (and L ≤ M).
#[derive(Debug, Clone, PartialEq)]
pub struct TailDistribution {
    generated: usize,
    max_len: usize,
    /// (length, cumulative weight), non-decreasing in both; the first knot is (g, 0).
    knots: Vec<(f64, f64)>,
}

impl HistorySnapshot {
    /// Censoring-adjusted weights of the samples above `g` (lengths ≥ `max_len` clamp to it);
    /// returns the (length, weight) of the exact ones and the weight left over for `max_len`.
    fn tail_weights(&self, g: usize, max_len: usize) -> (Vec<(usize, f64)>, f64) {
        let start = self.sorted.partition_point(|s| s.len <= g);
        let tail: Vec<Sample> = self.sorted[start..]
            .iter()
            .map(|s| if s.len >= max_len { Sample { len: max_len, censored: false } } else { *s })
            .collect();
        let mut exact = Vec::with_capacity(tail.len());
        let (mut share, mut dangling) = (0.0f64, 0.0f64);
        for (i, s) in tail.iter().enumerate() {
            let w = 1.0 + share;
            if s.censored {
                let right = tail.len() - i - 1;
                if right == 0 {
                    dangling += w;
                } else {
                    share += w / right as f64;
                }
            } else {
                exact.push((s.len, w));
            }
        }
        (exact, dangling)
    }

    /// The piecewise-linear conditional tail for a request that has generated `g` tokens and may
    /// generate at most `max_len`.
    pub fn tail(&self, g: usize, max_len: usize) -> TailDistribution {
        let (exact, dangling) = self.tail_weights(g, max_len);
        let mut knots = vec![(g as f64, 0.0)];
        let mut cum = 0.0;
        for &(len, w) in &exact {
            cum += w;
            knots.push((len as f64, cum));
        }
        let last = exact.last().map_or(g, |&(len, _)| len);
        if last < max_len {
            // The artifact's extra interval up to M, plus any censored weight with nowhere to go.
            knots.push((max_len as f64, cum + 1.0 + dangling));
        } else if dangling > 0.0 {
            if let Some(k) = knots.last_mut() {
                k.1 += dangling;
            }
        }
        TailDistribution { generated: g, max_len, knots }
    }

    /// A final length for a request that has not generated anything yet: a draw from the
    /// (censoring-adjusted) window itself, as the artifact does, clamped to `1..=max_len`.
    pub fn sample_new<R: Rng + ?Sized>(&self, max_len: usize, rng: &mut R) -> usize {
        let (exact, dangling) = self.tail_weights(0, max_len);
        let total: f64 = exact.iter().map(|e| e.1).sum::<f64>() + dangling;
        if total <= 0.0 {
            return max_len.max(1);
        }
        let mut u = rng.random::<f64>() * total;
        for &(len, w) in &exact {
            if u < w {
                return len.clamp(1, max_len.max(1));
            }
            u -= w;
        }
        max_len.max(1)
    }
}

impl TailDistribution {
    /// P(L ≤ x) under the piecewise-linear CDF (before rounding).
    pub fn cdf(&self, x: f64) -> f64 {
        let total = self.total();
        if x < self.knots[0].0 {
            return 0.0;
        }
        for w in self.knots.windows(2) {
            let ((x0, c0), (x1, c1)) = (w[0], w[1]);
            if x < x1 {
                let frac = if x1 > x0 { (x - x0) / (x1 - x0) } else { 1.0 };
                return (c0 + frac * (c1 - c0)) / total;
            }
        }
        1.0
    }

    fn total(&self) -> f64 {
        self.knots.last().map_or(0.0, |k| k.1)
    }

    /// Inverse CDF at `u ∈ [0, 1)`, rounded and clamped to `g+1..=M` (a running request will
    /// write at least one more token). Returns `g` if `g ≥ M` (nothing left to generate).
    pub fn quantile(&self, u: f64) -> usize {
        if self.generated >= self.max_len {
            return self.generated;
        }
        let target = u * self.total();
        let mut value = self.max_len as f64;
        for w in self.knots.windows(2) {
            let ((x0, c0), (x1, c1)) = (w[0], w[1]);
            if target < c1 {
                let frac = if c1 > c0 { (target - c0) / (c1 - c0) } else { 0.0 };
                value = x0 + frac * (x1 - x0);
                break;
            }
        }
        (value.round() as usize).clamp(self.generated + 1, self.max_len)
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.quantile(rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn history(lens: &[(usize, FinishKind)]) -> OutputHistory {
        let mut h = OutputHistory::new(lens.len().max(2), 0).unwrap();
        h.samples.clear();
        for &(l, k) in lens {
            h.record(l, k);
        }
        h
    }

    /// The artifact's CDF, written independently: R = [g, h > g…, M], knots at equal steps.
    fn artifact_cdf(window: &[usize], g: usize, m: usize, x: f64) -> f64 {
        let mut r: Vec<f64> = vec![g as f64];
        let mut above: Vec<usize> = window.iter().copied().filter(|&h| h > g).map(|h| h.min(m)).collect();
        above.sort_unstable();
        r.extend(above.iter().map(|&h| h as f64));
        if *r.last().unwrap() < m as f64 {
            r.push(m as f64);
        }
        let n = (r.len() - 1) as f64;
        if x < r[0] {
            return 0.0;
        }
        for k in 0..r.len() - 1 {
            if x < r[k + 1] {
                let frac = if r[k + 1] > r[k] { (x - r[k]) / (r[k + 1] - r[k]) } else { 1.0 };
                return (k as f64 + frac) / n;
            }
        }
        1.0
    }

    #[test]
    fn seeded_history_is_pessimistic() {
        let h = OutputHistory::new(40, 4096).unwrap();
        assert_eq!(h.len(), 20);
        let mut rng = StdRng::seed_from_u64(0);
        assert!((0..100).all(|_| h.snapshot().sample_new(4096, &mut rng) == 4096));
        assert!(OutputHistory::new(0, 1).is_err());
    }

    #[test]
    fn window_keeps_only_the_last_w_lengths() {
        let mut h = OutputHistory::new(4, 1000).unwrap();
        for l in [1, 2, 3, 4, 5] {
            h.record(l, FinishKind::Stop);
        }
        let s = h.snapshot();
        assert_eq!(s.sorted.iter().map(|s| s.len).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    }

    #[test]
    fn conditional_sampler_only_returns_lengths_above_generated() {
        let mut rng = StdRng::seed_from_u64(11);
        let lens: Vec<(usize, FinishKind)> =
            (0..40).map(|_| (rng.random_range(1..500), FinishKind::Stop)).collect();
        let snap = history(&lens).snapshot();
        for _ in 0..20000 {
            let m = rng.random_range(1..600);
            let g = rng.random_range(0..m);
            let l = snap.tail(g, m).sample(&mut rng);
            assert!(l > g && l <= m, "g={g} m={m} sampled {l}");
        }
    }

    #[test]
    fn conditional_samples_match_the_piecewise_linear_cdf() {
        let mut rng = StdRng::seed_from_u64(5);
        let window: Vec<usize> = (0..40).map(|_| rng.random_range(10..2000)).collect();
        let lens: Vec<(usize, FinishKind)> = window.iter().map(|&l| (l, FinishKind::Stop)).collect();
        let snap = history(&lens).snapshot();
        for &(g, m) in &[(0usize, 2048usize), (300, 2048), (1500, 4096), (1990, 2000)] {
            let tail = snap.tail(g, m);
            let n = 20000;
            let mut draws: Vec<usize> = (0..n).map(|_| tail.sample(&mut rng)).collect();
            draws.sort_unstable();
            // Rounding: a draw is ≤ x iff the continuous value is < x + 0.5.
            let mut ks = 0.0f64;
            for x in (g + 1)..=m {
                let emp = draws.partition_point(|&d| d <= x) as f64 / n as f64;
                let theo = if x == m { 1.0 } else { artifact_cdf(&window, g, m, x as f64 + 0.5) };
                ks = ks.max((emp - theo).abs());
            }
            // 1.63/sqrt(n) is the 1% critical value; the seed is fixed, so this is deterministic.
            assert!(ks < 1.63 / (n as f64).sqrt(), "g={g} m={m}: KS distance {ks}");
        }
    }

    #[test]
    fn tail_cdf_matches_the_artifact_without_censoring() {
        let window = [5usize, 40, 40, 90, 300];
        let lens: Vec<(usize, FinishKind)> = window.iter().map(|&l| (l, FinishKind::Stop)).collect();
        let snap = history(&lens).snapshot();
        for &(g, m) in &[(0usize, 500usize), (39, 500), (40, 100), (299, 300)] {
            let tail = snap.tail(g, m);
            for x in 0..=m {
                let (a, b) = (tail.cdf(x as f64), artifact_cdf(&window, g, m, x as f64));
                assert!((a - b).abs() < 1e-12, "g={g} m={m} x={x}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn censored_lengths_move_their_mass_above_themselves() {
        let mut lens = vec![(100, FinishKind::Stop); 20];
        lens.extend(vec![(50, FinishKind::Length); 20]);
        let censored = history(&lens).snapshot();
        let mut rng = StdRng::seed_from_u64(9);
        // Exact-only view of the same numbers would give 50 half of the time.
        assert!((0..2000).all(|_| censored.sample_new(1000, &mut rng) == 100));
        lens.iter_mut().for_each(|l| l.1 = FinishKind::Stop);
        let exact = history(&lens).snapshot();
        let fifties = (0..2000).filter(|_| exact.sample_new(1000, &mut rng) == 50).count();
        assert!((800..1200).contains(&fifties), "{fifties}");
        // A censored sample above everything hands its mass to M.
        let top = history(&[(10, FinishKind::Stop), (20, FinishKind::Abort)]).snapshot();
        let t = top.tail(0, 100);
        assert!((t.cdf(10.0) - 1.0 / 3.0).abs() < 1e-12, "{:?}", t.knots);
    }

    #[test]
    fn censored_at_or_above_max_counts_as_exact_max() {
        let snap = history(&[(300, FinishKind::Length), (300, FinishKind::Length)]).snapshot();
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..100).all(|_| snap.sample_new(200, &mut rng) == 200));
    }

    #[test]
    fn zero_length_censored_samples_are_not_recorded() {
        let mut h = OutputHistory::new(4, 10).unwrap();
        let before = h.len();
        h.record(0, FinishKind::Abort);
        assert_eq!(h.len(), before);
        h.record(0, FinishKind::Stop);
        assert_eq!(h.len(), before + 1);
    }
}
