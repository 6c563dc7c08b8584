//! When each request is sent, as `vllm bench serve` schedules them: gaps drawn from a gamma
//! distribution with shape `burstiness` and scale `1/(rate · burstiness)` (mean `1/rate`;
//! burstiness 1 is the exponential, i.e. a Poisson process; below 1 burstier, above 1 more
//! regular; infinite burstiness gives constant gaps), accumulated, then rescaled so the last
//! send happens at exactly `n / rate` — which keeps the offered load identical from seed to seed.
//! An infinite rate sends everything at t = 0.
//!
//! Must not know: HTTP, concurrency limits (a capped client may send later than scheduled).

use anyhow::{bail, Result};
use rand::Rng;
use rand_distr::{Distribution, Gamma};

/// Seconds after the benchmark start at which each of `n` requests is due.
pub fn send_offsets(n: usize, rate: f64, burstiness: f64, rng: &mut impl Rng) -> Result<Vec<f64>> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--request-rate must be positive (or inf), got {rate}");
    }
    if burstiness.is_nan() || burstiness <= 0.0 {
        bail!("--burstiness must be positive (or inf), got {burstiness}");
    }
    if rate.is_infinite() || n == 0 {
        return Ok(vec![0.0; n]);
    }
    let gaps: Vec<f64> = if burstiness.is_infinite() {
        vec![1.0 / rate; n]
    } else {
        let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness))
            .map_err(|e| anyhow::anyhow!("gamma(shape {burstiness}, rate {rate}): {e}"))?;
        (0..n).map(|_| gamma.sample(rng)).collect()
    };
    let mut offsets: Vec<f64> = gaps
        .iter()
        .scan(0.0, |t, g| {
            *t += g;
            Some(*t)
        })
        .collect();
    let target = n as f64 / rate;
    let last = offsets[n - 1];
    if !target.is_finite() || !last.is_finite() {
        bail!("--request-rate {rate} with --burstiness {burstiness}: the schedule does not fit in finite time");
    }
    if last > 0.0 {
        let factor = target / last;
        offsets.iter_mut().for_each(|t| *t *= factor);
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        let t = send_offsets(5, f64::INFINITY, 1.0, &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(t, vec![0.0; 5]);
    }

    #[test]
    fn the_last_send_is_rescaled_to_n_over_rate_and_sends_are_ordered() {
        for burstiness in [0.3, 1.0, 4.0] {
            let t = send_offsets(200, 8.0, burstiness, &mut StdRng::seed_from_u64(7)).unwrap();
            assert!((t[199] - 25.0).abs() < 1e-9, "{}", t[199]);
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
            assert!(t[0] > 0.0);
        }
    }

    #[test]
    fn infinite_burstiness_gives_constant_gaps() {
        let t = send_offsets(4, 2.0, f64::INFINITY, &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(t, vec![0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn lower_burstiness_makes_gaps_more_variable() {
        // Coefficient of variation of gamma(k) gaps is 1/sqrt(k): ~1.83 at k=0.3, ~0.5 at k=4.
        let cv = |b: f64| {
            let t = send_offsets(4000, 10.0, b, &mut StdRng::seed_from_u64(1)).unwrap();
            let gaps: Vec<f64> = std::iter::once(t[0]).chain(t.windows(2).map(|w| w[1] - w[0])).collect();
            let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / m
        };
        let (bursty, poisson, regular) = (cv(0.3), cv(1.0), cv(4.0));
        assert!((poisson - 1.0).abs() < 0.1, "{poisson}");
        assert!((bursty - 1.826).abs() < 0.25, "{bursty}");
        assert!((regular - 0.5).abs() < 0.06, "{regular}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = send_offsets(10, 3.0, 1.0, &mut StdRng::seed_from_u64(42)).unwrap();
        let b = send_offsets(10, 3.0, 1.0, &mut StdRng::seed_from_u64(42)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn non_positive_rate_or_burstiness_is_an_error() {
        let mut rng = StdRng::seed_from_u64(0);
        assert!(send_offsets(3, 0.0, 1.0, &mut rng).unwrap_err().to_string().contains("--request-rate"));
        assert!(send_offsets(3, 1.0, -1.0, &mut rng).unwrap_err().to_string().contains("--burstiness"));
        assert!(send_offsets(3, 1e-320, 1.0, &mut rng).unwrap_err().to_string().contains("finite time"));
    }
}
