//! Rotary position embedding, HF "rotate_half" (NeoX) convention: with `d = head_dim / 2`,
//! `out[i] = x[i]·cos − x[i+d]·sin` and `out[i+d] = x[i+d]·cos + x[i]·sin`, per token at its
//! absolute position.
//!
//! The cos/sin rows are gathered at the token positions with `index_select` (device-generic, and
//! it rejects out-of-range positions), then a CustomOp rotates every head of each token.
//! Must not know: how the tables were computed (base, scaling): callers build them.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::{contiguous, with_float_type, Elem, KernelFloat};

/// Tokens per rayon task floor.
const MIN_TOKENS_PER_TASK: usize = 8;

/// Rotary embedding on `x: [T, num_heads, head_dim]` with F32 tables `cos`, `sin`:
/// `[max_positions, head_dim / 2]`, gathered at `positions: [T]` (U32). Returns a new tensor of
/// x's dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (num_tokens, _, head_dim) = x.dims3()?;
    if head_dim % 2 != 0 {
        bail!("rope: head_dim {head_dim} must be even")
    }
    let (_, half) = cos.dims2()?;
    if half != head_dim / 2 || sin.dims() != cos.dims() {
        bail!(
            "rope: cos {:?} and sin {:?} must both be [max_positions, {}]",
            cos.dims(),
            sin.dims(),
            head_dim / 2
        )
    }
    if cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
        bail!("rope: cos/sin tables must be f32, got {:?}/{:?}", cos.dtype(), sin.dtype())
    }
    if positions.dims() != [num_tokens] {
        bail!("rope: positions has shape {:?}, expected [{num_tokens}]", positions.dims())
    }
    let cos = cos.index_select(positions, 0)?;
    let sin = sin.index_select(positions, 0)?;
    x.contiguous()?.apply_op3_no_bwd(&cos, &sin, &Rope)
}

/// Inputs: x `[T, heads, head_dim]`, cos and sin already gathered `[T, head_dim / 2]` (F32).
struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        cos: &candle_core::CudaStorage,
        cosl: &Layout,
        sin: &candle_core::CudaStorage,
        sinl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::rope(x, xl, cos, cosl, sin, sinl)
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        cos: &CpuStorage,
        cos_l: &Layout,
        sin: &CpuStorage,
        sin_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (_, heads, head_dim) = x_l.shape().dims3()?;
        let cos = contiguous::<f32>(cos, cos_l, name, "cos")?;
        let sin = contiguous::<f32>(sin, sin_l, name, "sin")?;
        let storage = with_float_type!(x, name, T => {
            let x = contiguous::<T>(x, x_l, name, "x")?;
            T::into_storage(rotate(x, cos, sin, heads, head_dim))
        });
        Ok((storage, x_l.shape().clone()))
    }
}

fn rotate<T: KernelFloat>(x: &[T], cos: &[f32], sin: &[f32], heads: usize, head_dim: usize) -> Vec<T> {
    let half = head_dim / 2;
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(heads * head_dim)
        .zip(x.par_chunks(heads * head_dim))
        .zip(cos.par_chunks(half).zip(sin.par_chunks(half)))
        .with_min_len(MIN_TOKENS_PER_TASK)
        .for_each(|((o, x), (cos, sin))| {
            for (o, x) in o.chunks_exact_mut(head_dim).zip(x.chunks_exact(head_dim)) {
                let (o1, o2) = o.split_at_mut(half);
                let (x1, x2) = x.split_at(half);
                for i in 0..half {
                    let (a, b) = (x1[i].to_f32(), x2[i].to_f32());
                    o1[i] = T::from_f32(a * cos[i] - b * sin[i]);
                    o2[i] = T::from_f32(b * cos[i] + a * sin[i]);
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn tables(max_pos: usize, head_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
        let half = head_dim / 2;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..max_pos {
            for i in 0..half {
                let angle = p as f64 / base.powf(2.0 * i as f64 / head_dim as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// The textbook formula: x·cos + rotate_half(x)·sin with rotate_half(x) = [-x2, x1] and the
    /// half-size tables repeated twice.
    fn naive(x: &[f32], positions: &[u32], heads: usize, hd: usize, base: f64) -> Vec<f32> {
        let mut out = Vec::new();
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let row = &x[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                for i in 0..hd {
                    let freq = (i % (hd / 2)) as f64;
                    let angle = p as f64 / base.powf(2.0 * freq / hd as f64);
                    let rotated = if i < hd / 2 { -row[i + hd / 2] } else { row[i - hd / 2] } as f64;
                    out.push((row[i] as f64 * angle.cos() + rotated * angle.sin()) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_rotate_half_formula_at_scattered_positions() -> Result<()> {
        let (heads, hd, max_pos) = (3, 16, 64);
        let (cos, sin) = tables(max_pos, hd, 10000.0);
        let positions = vec![0u32, 5, 63, 17, 17];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let x: Vec<f32> = (0..positions.len() * heads * hd).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dev = Device::Cpu;
        let out = rope(
            &Tensor::from_slice(&x, (positions.len(), heads, hd), &dev)?,
            &Tensor::from_slice(&cos, (max_pos, hd / 2), &dev)?,
            &Tensor::from_slice(&sin, (max_pos, hd / 2), &dev)?,
            &Tensor::new(positions.as_slice(), &dev)?,
        )?;
        let want = naive(&x, &positions, heads, hd, 10000.0);
        for (a, b) in out.flatten_all()?.to_vec1::<f32>()?.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Position 0 is the identity.
        assert_eq!(out.get(0)?.flatten_all()?.to_vec1::<f32>()?, x[..heads * hd].to_vec());
        Ok(())
    }

    #[test]
    fn position_beyond_the_table_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let table = Tensor::zeros((4, 2), DType::F32, &dev)?;
        let x = Tensor::zeros((1, 1, 4), DType::F32, &dev)?;
        assert!(rope(&x, &table, &table, &Tensor::new(&[4u32], &dev)?).is_err());
        assert!(rope(&x, &table, &table, &Tensor::new(&[1u32, 2], &dev)?).is_err(), "wrong count");
        let odd = Tensor::zeros((1, 1, 5), DType::F32, &dev)?;
        assert!(rope(&odd, &table, &table, &Tensor::new(&[1u32], &dev)?).is_err());
        Ok(())
    }

    #[test]
    fn f16_input_is_rotated_in_f32_and_keeps_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let (cos, sin) = tables(8, 4, 100.0);
        let x = Tensor::new(&[[[1f32, 2.0, 3.0, 4.0]]], &dev)?.to_dtype(DType::F16)?;
        let out = rope(
            &x,
            &Tensor::from_slice(&cos, (8, 2), &dev)?,
            &Tensor::from_slice(&sin, (8, 2), &dev)?,
            &Tensor::new(&[3u32], &dev)?,
        )?;
        assert_eq!(out.dtype(), DType::F16);
        let want = naive(&[1.0, 2.0, 3.0, 4.0], &[3], 1, 4, 100.0);
        for (a, b) in out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().zip(&want) {
            assert!((a - b).abs() < 5e-3, "{a} vs {b}");
        }
        Ok(())
    }
}
