//! RMSNorm over the last dimension, `x * rsqrt(mean(x²) + eps) * weight`, as a CustomOp with f32
//! accumulation whatever the storage dtype.
//!
//! Works for `[T, hidden]` and for qwen3's per-head q/k norm (`[T, heads, head_dim]` with a
//! `[head_dim]` weight): every leading dimension is just more rows.
//! Must not know: which layer calls it.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::{contiguous, to_f32_vec, with_float_type, Elem, KernelFloat};

/// Rows per rayon task floor: a row is a few hundred flops, so tiny batches stay serial.
const MIN_ROWS_PER_TASK: usize = 16;

/// RMSNorm over the last dim of `x` (any rank ≥ 1) with `weight: [last_dim]`. Output has x's
/// dtype; the weight may be any float dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let dim = match x.dims().last() {
        Some(&d) if d > 0 => d,
        _ => bail!("rms_norm: x must have a non-empty last dimension, got {:?}", x.dims()),
    };
    if weight.dims() != [dim] {
        bail!("rms_norm: weight has shape {:?}, expected [{dim}]", weight.dims())
    }
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("rms_norm: eps must be finite and non-negative, got {eps}")
    }
    x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::rms_norm(self.eps, x, xl, w, wl)
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let weight = to_f32_vec(w, w_l, name, "weight")?;
        let storage = with_float_type!(x, name, T => {
            let x = contiguous::<T>(x, x_l, name, "x")?;
            T::into_storage(normalize(x, &weight, self.eps))
        });
        Ok((storage, x_l.shape().clone()))
    }
}

fn normalize<T: KernelFloat>(x: &[T], weight: &[f32], eps: f32) -> Vec<T> {
    let dim = weight.len();
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(dim).zip(x.par_chunks(dim)).with_min_len(MIN_ROWS_PER_TASK).for_each(|(o, row)| {
        let sum_sq: f32 = row.iter().map(|v| v.to_f32() * v.to_f32()).sum();
        let inv = 1.0 / (sum_sq / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = T::from_f32(v.to_f32() * inv * w);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    fn naive(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        x.chunks(w.len())
            .flat_map(|row| {
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / row.len() as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                row.iter().zip(w).map(move |(v, w)| (*v as f64 * inv * *w as f64) as f32)
            })
            .collect()
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-3.0..3.0)).collect()
    }

    #[test]
    fn matches_naive_formula_on_hidden_rows() -> Result<()> {
        let (x, w) = (random(37 * 96, 1), random(96, 2));
        let out = rms_norm(&Tensor::from_slice(&x, (37, 96), &Device::Cpu)?, &Tensor::new(w.as_slice(), &Device::Cpu)?, 1e-6)?;
        for (a, b) in out.flatten_all()?.to_vec1::<f32>()?.iter().zip(naive(&x, &w, 1e-6)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn per_head_norm_normalizes_each_head_separately() -> Result<()> {
        let (x, w) = (random(5 * 4 * 16, 3), random(16, 4));
        let t = Tensor::from_slice(&x, (5, 4, 16), &Device::Cpu)?;
        let out = rms_norm(&t, &Tensor::new(w.as_slice(), &Device::Cpu)?, 1e-5)?;
        assert_eq!(out.dims(), &[5, 4, 16]);
        for (a, b) in out.flatten_all()?.to_vec1::<f32>()?.iter().zip(naive(&x, &w, 1e-5)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn bf16_input_keeps_dtype_and_matches_within_bf16_precision() -> Result<()> {
        let (x, w) = (random(3 * 64, 5), random(64, 6));
        let t = Tensor::from_slice(&x, (3, 64), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let out = rms_norm(&t, &Tensor::new(w.as_slice(), &Device::Cpu)?, 1e-6)?;
        assert_eq!(out.dtype(), DType::BF16);
        let xr = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().zip(naive(&xr, &w, 1e-6)) {
            assert!((a - b).abs() <= 0.01 * b.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn strided_input_is_normalized_by_logical_rows() -> Result<()> {
        let x = random(8 * 6, 7);
        let t = Tensor::from_slice(&x, (6, 8), &Device::Cpu)?.t()?; // [8, 6] view, not contiguous
        let w = Tensor::ones(6, DType::F32, &Device::Cpu)?;
        let out = rms_norm(&t, &w, 0.0)?.to_vec2::<f32>()?;
        let rows = t.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in out.concat().iter().zip(naive(&rows, &[1.0; 6], 0.0)) {
            assert!((a - b).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn wrong_weight_shape_is_an_error() -> Result<()> {
        let x = Tensor::ones((2, 8), DType::F32, &Device::Cpu)?;
        assert!(rms_norm(&x, &Tensor::ones(7, DType::F32, &Device::Cpu)?, 1e-6).is_err());
        assert!(rms_norm(&x, &Tensor::ones(8, DType::F32, &Device::Cpu)?, f32::NAN).is_err());
        Ok(())
    }
}
