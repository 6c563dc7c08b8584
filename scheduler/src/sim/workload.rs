//! Synthetic request-length workloads for the simulator.
//!
//! Owns: the length distributions and drawing a prompt set from a seed. Must not know about
//! clients, scheduling or cost.
//!
//! - `uniform-1/2/3`: the Past-Future paper's synthetic sets (input/output uniform in
//!   32–4096/2048–4096, 3000–5000/3000–5000, 2048–4096/32–4096). `max_tokens` is the top of the
//!   output range: the friendliest choice for the conservative baseline (it reserves exactly
//!   the workload's largest output, not the server's).
//! - `sharegpt`: a ShareGPT-like fit, *synthetic*: log-normal input (μ = 4.58, σ = 1.0, mean ≈ 161
//!   tokens) and output (μ = 5.42, σ = 0.9, mean ≈ 338 tokens), matching the means reported for
//!   ShareGPT in the vLLM paper; clamped to 4–4096 input and 1–4096 output, `max_tokens` 4096.
//!   The σ's are plausible spreads, not fitted to the data set (none is available offline).
//! - `sharegpt-o1`: the same inputs with long reasoning-style outputs, a guess standing in for
//!   the paper's ShareGPT-o1 (output log-normal μ = 7.5, σ = 0.7: median ≈ 1800 tokens),
//!   clamped to 1–8192, `max_tokens` 8192.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::Serialize;

use crate::error::{Result, SchedulerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Workload {
    ShareGpt,
    ShareGptO1,
    Uniform1,
    Uniform2,
    Uniform3,
}

/// One prompt of a data set: its length, its natural output length (where it would emit EOS),
/// and the `max_tokens` the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptSpec {
    pub input_len: usize,
    pub output_len: usize,
    pub max_tokens: usize,
}

impl Workload {
    pub const ALL: [Workload; 5] =
        [Workload::ShareGpt, Workload::ShareGptO1, Workload::Uniform1, Workload::Uniform2, Workload::Uniform3];
    pub const UNIFORM: [Workload; 3] = [Workload::Uniform1, Workload::Uniform2, Workload::Uniform3];

    pub fn as_str(&self) -> &'static str {
        match self {
            Workload::ShareGpt => "sharegpt",
            Workload::ShareGptO1 => "sharegpt-o1",
            Workload::Uniform1 => "uniform-1",
            Workload::Uniform2 => "uniform-2",
            Workload::Uniform3 => "uniform-3",
        }
    }

    /// The largest output a request of this workload may produce (`max_tokens`).
    pub fn max_tokens(&self) -> usize {
        match self {
            Workload::ShareGpt => 4096,
            Workload::ShareGptO1 => 8192,
            Workload::Uniform1 | Workload::Uniform3 => 4096,
            Workload::Uniform2 => 5000,
        }
    }

    /// The longest prompt this workload draws.
    pub fn max_input_len(&self) -> usize {
        match self {
            Workload::ShareGpt | Workload::ShareGptO1 | Workload::Uniform1 | Workload::Uniform3 => 4096,
            Workload::Uniform2 => 5000,
        }
    }

    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> PromptSpec {
        let max_tokens = self.max_tokens();
        let (input_len, output_len) = match self {
            Workload::ShareGpt => (lognormal(rng, 4.58, 1.0, 4, 4096), lognormal(rng, 5.42, 0.9, 1, 4096)),
            Workload::ShareGptO1 => (lognormal(rng, 4.58, 1.0, 4, 4096), lognormal(rng, 7.5, 0.7, 1, 8192)),
            Workload::Uniform1 => (rng.random_range(32..=4096), rng.random_range(2048..=4096)),
            Workload::Uniform2 => (rng.random_range(3000..=5000), rng.random_range(3000..=5000)),
            Workload::Uniform3 => (rng.random_range(2048..=4096), rng.random_range(32..=4096)),
        };
        PromptSpec { input_len, output_len, max_tokens }
    }

    pub fn generate<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Vec<PromptSpec> {
        (0..n).map(|_| self.draw(rng)).collect()
    }
}

/// exp(N(μ, σ²)) by Box–Muller, rounded and clamped.
fn lognormal<R: Rng + ?Sized>(rng: &mut R, mu: f64, sigma: f64, lo: usize, hi: usize) -> usize {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    ((mu + sigma * z).exp().round() as usize).clamp(lo, hi)
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self> {
        // Separators are optional: "uniform-1", "uniform_1" and "uniform1" name the same set.
        let bare = |t: &str| t.to_ascii_lowercase().replace(['-', '_'], "");
        Workload::ALL.into_iter().find(|w| bare(w.as_str()) == bare(s)).ok_or_else(|| {
            SchedulerError::InvalidConfig(format!(
                "unknown workload '{s}' (expected sharegpt, sharegpt-o1, uniform-1, uniform-2 or uniform-3)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn uniform_workloads_stay_in_the_paper_ranges() {
        let mut rng = StdRng::seed_from_u64(0);
        let ranges = [((32, 4096), (2048, 4096)), ((3000, 5000), (3000, 5000)), ((2048, 4096), (32, 4096))];
        for (w, ((il, ih), (ol, oh))) in Workload::UNIFORM.into_iter().zip(ranges) {
            let set = w.generate(2000, &mut rng);
            assert!(set.iter().all(|p| (il..=ih).contains(&p.input_len) && (ol..=oh).contains(&p.output_len)));
            assert!(set.iter().all(|p| p.output_len <= p.max_tokens && p.input_len <= w.max_input_len()));
            let mean_out = set.iter().map(|p| p.output_len as f64).sum::<f64>() / 2000.0;
            assert!((mean_out - (ol + oh) as f64 / 2.0).abs() < 0.03 * oh as f64, "{w}: {mean_out}");
        }
    }

    #[test]
    fn sharegpt_like_means_match_the_documented_fit() {
        let mut rng = StdRng::seed_from_u64(1);
        let set = Workload::ShareGpt.generate(20000, &mut rng);
        let mean = |f: fn(&PromptSpec) -> usize| set.iter().map(|p| f(p) as f64).sum::<f64>() / set.len() as f64;
        let (mi, mo) = (mean(|p| p.input_len), mean(|p| p.output_len));
        assert!((140.0..180.0).contains(&mi), "input mean {mi}");
        assert!((300.0..370.0).contains(&mo), "output mean {mo}");
        let w = Workload::ShareGpt;
        assert!(set.iter().all(|p| p.input_len <= w.max_input_len() && p.output_len <= w.max_tokens()));
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.as_str().parse::<Workload>().unwrap(), w);
        }
        for alias in ["uniform1", "Uniform_1", "UNIFORM-1"] {
            assert_eq!(alias.parse::<Workload>().unwrap(), Workload::Uniform1);
        }
        assert_eq!("sharegpt_o1".parse::<Workload>().unwrap(), Workload::ShareGptO1);
        assert!("alpaca".parse::<Workload>().is_err());
        assert!("uniform-4".parse::<Workload>().is_err());
    }
}
