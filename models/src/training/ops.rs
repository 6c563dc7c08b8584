//! Ops the training forward needs with a backward: candle's fused kernels for these (and
//! kvault's own) compute only forward, so they are written here from primitives that all have
//! one. Every reduction's max is detached: it only shifts for stability and cancels exactly.

use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Rotate-half RoPE for `x: [heads, tokens, head_dim]` at positions `0..tokens`, from the
/// `[positions, head_dim/2]` tables (the same tables inference uses).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, t, d) = x.dims3()?;
    let half = d / 2;
    let cos = cos.narrow(0, 0, t)?.to_dtype(x.dtype())?;
    let sin = sin.narrow(0, 0, t)?.to_dtype(x.dtype())?;
    let x1 = x.narrow(2, 0, half)?;
    let x2 = x.narrow(2, half, half)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[a, b], 2)?)
}

/// `log softmax` over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `softmax` over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `[t, t]` causal tables: the age `t − i` of key `i` for query `t` (0 above the diagonal), and
/// the additive mask (0 on and below the diagonal, a large negative number above it; finite so
/// no `inf · 0` can turn a gradient into NaN).
pub fn causal_tables(t: usize, dtype: DType, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let mut age = vec![0f32; t * t];
    let mut mask = vec![0f32; t * t];
    for q in 0..t {
        for k in 0..t {
            if k <= q {
                age[q * t + k] = (q - k) as f32;
            } else {
                mask[q * t + k] = -1e9;
            }
        }
    }
    Ok((
        Tensor::from_vec(age, (t, t), device)?.to_dtype(dtype)?,
        Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softmaxes_match_candle_nn() {
        let x = Tensor::new(&[[1.0f32, 2.0, -3.0, 0.5], [10.0, 10.0, -10.0, 0.0]], &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
        let got = softmax(&x).unwrap().to_vec2::<f32>().unwrap();
        let got_log = log_softmax(&x).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        for ((w, g), l) in want.iter().flatten().zip(got.iter().flatten()).zip(got_log.iter().flatten()) {
            assert!((w - g).abs() < 1e-6 && (w - l).abs() < 1e-6);
        }
    }
}
