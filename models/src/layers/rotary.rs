//! Rotary position embeddings (HF rotate-half convention) with the scalings kvault supports.
//!
//! The cos/sin tables cover every position up to `max_position_embeddings` and live on the
//! model's device; the kernel gathers rows by each token's absolute position, so one table
//! serves prefill chunks and decode rows alike.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::config::{ModelConfig, RopeScaling};

#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl RotaryEmbedding {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling)?;
        let half = inv_freq.len();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for &f in &inv_freq {
                // f32 product, as transformers computes `position * inv_freq` in float32.
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
            max_positions: n,
        })
    }

    /// The `[max_positions, head_dim/2]` cos and sin tables (the training forward applies RoPE
    /// with plain tensor ops from them).
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// `x`: `[tokens, heads, head_dim]`, `positions`: `[tokens]` u32.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        Ok(kvault_kernels::rope(x, &self.cos, &self.sin, positions)?)
    }
}

/// `1 / theta^(2i/d)` for i in 0..d/2, then scaled. Computed in f32 like transformers.
fn inverse_frequencies(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Result<Vec<f32>> {
    let base: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    Ok(match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::FrequencyFactors(factors) => {
            if factors.len() != base.len() {
                bail!("rope_freqs has {} entries, expected head_dim/2 = {}", factors.len(), base.len());
            }
            base.iter().zip(factors).map(|(f, d)| f / d).collect()
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let old_ctx = *original_max_position_embeddings;
            let low_wavelen = old_ctx / low_freq_factor;
            let high_wavelen = old_ctx / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        // Between the two bands: interpolate between scaled and unscaled.
                        let smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscaled_frequencies_follow_theta() {
        let f = inverse_frequencies(8, 10_000.0, &RopeScaling::None).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[2] - 1.0 / 100.0).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_leaves_high_frequencies_and_divides_low_ones() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let base = inverse_frequencies(128, 500_000.0, &RopeScaling::None).unwrap();
        let scaled = inverse_frequencies(128, 500_000.0, &scaling).unwrap();
        // Highest frequency: wavelength 2π < 8192/4 → unchanged.
        assert_eq!(scaled[0], base[0]);
        // Lowest frequency: wavelength far above 8192 → divided by the factor.
        assert!((scaled[63] - base[63] / 8.0).abs() < 1e-12);
        // Everything in between lies within [f/factor, f].
        for (s, b) in scaled.iter().zip(&base) {
            assert!(*s <= *b && *s >= b / 8.0 - 1e-12);
        }
    }
}
