//! HardKuma (Bastings et al. 2019, as LycheeDecode uses it, ALGORITHMS.md §2.3): a Kumaraswamy
//! sample stretched to (−0.1, 1.1) and clamped to [0, 1], so z has point masses at exactly 0
//! (sparse) and 1 (retrieval) and a differentiable path to (a, b) in between.
//!
//! The tensor functions carry gradients to `a` and `b`; the `f64` ones are the same formulas for
//! decisions, reports and tests.

use anyhow::Result;
use candle_core::Tensor;

/// The stretch interval (l, r).
pub const STRETCH: (f64, f64) = (-0.1, 1.1);

/// `u ~ Uniform(EPS, 1 − EPS)`: keeps `ln(1 − u)` and its gradient finite.
pub const U_EPS: f64 = 0.001;

/// Where z = 0 begins in Kuma space: `(0 − l) / (r − l)`.
pub fn x0() -> f64 {
    (0.0 - STRETCH.0) / (STRETCH.1 - STRETCH.0)
}

/// The Kumaraswamy inverse CDF `x = (1 − (1 − u)^(1/b))^(1/a)`, written with exp/ln so every
/// op has a backward.
pub fn kuma_inverse_cdf(a: &Tensor, b: &Tensor, u: &Tensor) -> Result<Tensor> {
    let inner = (u.affine(-1.0, 1.0)?.log()?.div(b)?.exp()?.affine(-1.0, 1.0)?).log()?; // ln(1 − (1 − u)^(1/b))
    Ok(inner.div(a)?.exp()?)
}

/// z = clamp(l + (r − l)·x, 0, 1), as `1 − relu(1 − relu(s))` (relu has a backward; the clamp's
/// gradient is 0 outside (0, 1), as HardKuma's is).
pub fn hard_kuma(a: &Tensor, b: &Tensor, u: &Tensor) -> Result<Tensor> {
    let s = kuma_inverse_cdf(a, b, u)?.affine(STRETCH.1 - STRETCH.0, STRETCH.0)?;
    Ok(s.relu()?.affine(-1.0, 1.0)?.relu()?.affine(-1.0, 1.0)?)
}

/// `1 − P(z = 0) = (1 − x0^a)^b`, the probability that a head is not sparse.
pub fn p_nonzero(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let x0a = (a * x0().ln())?.exp()?;
    Ok((x0a.affine(-1.0, 1.0)?.log()? * b)?.exp()?)
}

/// The Kumaraswamy CDF `1 − (1 − x^a)^b`.
pub fn kuma_cdf(x: f64, a: f64, b: f64) -> f64 {
    1.0 - (1.0 - x.powf(a)).powf(b)
}

/// `P(z = 0) = CDF(x0)`.
pub fn p_zero(a: f64, b: f64) -> f64 {
    kuma_cdf(x0(), a, b)
}

/// The stretched, clamped sample for one `u` (the scalar twin of [`hard_kuma`]).
pub fn hard_kuma_f64(a: f64, b: f64, u: f64) -> f64 {
    let x = (1.0 - (1.0 - u).powf(1.0 / b)).powf(1.0 / a);
    (STRETCH.0 + (STRETCH.1 - STRETCH.0) * x).clamp(0.0, 1.0)
}

/// `E[Kuma(a, b)] = b·B(1 + 1/a, b)`, in log-gamma form (the Beta function overflows long before
/// its ratio does).
pub fn kuma_mean(a: f64, b: f64) -> f64 {
    let lg = libm::lgamma;
    (b.ln() + lg(1.0 + 1.0 / a) + lg(b) - lg(1.0 + 1.0 / a + b)).exp()
}

/// The inference decision: retrieval ⇔ the mean of the unstretched Kuma exceeds 0.5 (as the
/// official code thresholds it).
pub fn decides_retrieval(a: f64, b: f64) -> bool {
    kuma_mean(a, b) > 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `∫₀^upper g(x) f(x; a, b) dx` for the Kumaraswamy density, by the substitution
    /// `x = t^(1/a)` that removes the `x^(a−1)` singularity at 0: `f dx = b (1 − t)^(b−1) dt`,
    /// then `t = 1 − s^(1/b)` for the one at 1: `= ds`. So the integral is `∫ g(x(s)) ds` over
    /// the matching s-range — smooth, and the midpoint rule converges fast.
    fn integrate(a: f64, b: f64, upper: f64, g: impl Fn(f64) -> f64) -> f64 {
        let t_hi = upper.powf(a);
        let s_lo = (1.0 - t_hi).powf(b);
        let n = 200_000;
        let h = (1.0 - s_lo) / n as f64;
        (0..n)
            .map(|i| {
                let s = s_lo + (i as f64 + 0.5) * h;
                let x = (1.0 - s.powf(1.0 / b)).powf(1.0 / a);
                g(x) * h
            })
            .sum()
    }

    const PARAMS: [(f64, f64); 6] = [(1.0, 1.0), (0.5, 2.0), (2.0, 0.7), (0.08, 1.3), (3.0, 5.0), (1.4, 0.3)];

    #[test]
    fn the_mean_matches_numeric_integration() {
        for (a, b) in PARAMS {
            let numeric = integrate(a, b, 1.0, |x| x);
            assert!((kuma_mean(a, b) - numeric).abs() < 1e-6, "a={a} b={b}: {} vs {numeric}", kuma_mean(a, b));
        }
        assert!((kuma_mean(1.0, 1.0) - 0.5).abs() < 1e-12 && !decides_retrieval(1.0, 1.0));
        assert!(decides_retrieval(3.0, 1.0) && !decides_retrieval(0.3, 1.0));
    }

    #[test]
    fn p_zero_is_the_density_mass_below_x0_and_the_tensor_form_agrees() {
        for (a, b) in PARAMS {
            let numeric = integrate(a, b, x0(), |_| 1.0);
            assert!((p_zero(a, b) - numeric).abs() < 1e-6, "a={a} b={b}: {} vs {numeric}", p_zero(a, b));
            let t = |v: f64| Tensor::new(&[v], &Device::Cpu).unwrap();
            let nz: Vec<f64> = p_nonzero(&t(a), &t(b)).unwrap().to_vec1().unwrap();
            assert!((nz[0] - (1.0 - p_zero(a, b))).abs() < 1e-12);
        }
    }

    #[test]
    fn samples_follow_the_distribution() {
        for (a, b) in PARAMS {
            // The sampler is the inverse CDF: CDF(x(u)) = u.
            for u in [0.01f64, 0.3, 0.5, 0.77, 0.99] {
                let x = (1.0 - (1.0 - u).powf(1.0 / b)).powf(1.0 / a);
                assert!((kuma_cdf(x, a, b) - u).abs() < 1e-9);
            }
            // Over a fine grid of u, the share of exact zeros and ones and the mean of z match
            // the integrals of the stretched density.
            let n = 100_000;
            let zs: Vec<f64> = (0..n).map(|i| hard_kuma_f64(a, b, (i as f64 + 0.5) / n as f64)).collect();
            let zeros = zs.iter().filter(|&&z| z == 0.0).count() as f64 / n as f64;
            let ones = zs.iter().filter(|&&z| z == 1.0).count() as f64 / n as f64;
            assert!((zeros - p_zero(a, b)).abs() < 1e-4, "a={a} b={b}: zeros {zeros} vs {}", p_zero(a, b));
            let x1 = (1.0 - STRETCH.0) / (STRETCH.1 - STRETCH.0);
            assert!((ones - (1.0 - kuma_cdf(x1, a, b))).abs() < 1e-4);
            let mean_z = zs.iter().sum::<f64>() / n as f64;
            let numeric = integrate(a, b, 1.0, |x| (STRETCH.0 + (STRETCH.1 - STRETCH.0) * x).clamp(0.0, 1.0));
            assert!((mean_z - numeric).abs() < 1e-4, "a={a} b={b}: E[z] {mean_z} vs {numeric}");
            // The tensor sampler is the same function.
            let t = |v: f64| Tensor::new(&[v], &Device::Cpu).unwrap();
            let z: Vec<f64> = hard_kuma(&t(a), &t(b), &t(0.37)).unwrap().to_vec1().unwrap();
            assert!((z[0] - hard_kuma_f64(a, b, 0.37)).abs() < 1e-12);
        }
    }
}
