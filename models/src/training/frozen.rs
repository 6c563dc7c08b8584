//! `y = x Wᵀ` for a frozen weight, as a custom op whose backward computes only the input's
//! gradient. candle's matmul backward always computes the weight's gradient too, even for a
//! weight nothing trains: that would be a third of all training FLOPs spent on values thrown
//! away (the model's matrices, the vocabulary head above all).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

pub struct FrozenLinear {
    /// `[out, in]`.
    pub weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Rebuild the input as a tensor (a copy of [tokens, in], small beside the product).
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear: input must be contiguous".into()))?;
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            _ => return Err(candle_core::Error::Msg("frozen-linear: f32 or f64 only".into())),
        };
        let y = x.matmul(&self.weight.t()?)?;
        let shape = y.shape().clone();
        let y = y.flatten_all()?;
        let out = match storage {
            CpuStorage::F64(_) => CpuStorage::F64(y.to_vec1()?),
            _ => CpuStorage::F32(y.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x: [tokens, in]` times a frozen `[out, in]` weight.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> anyhow::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(FrozenLinear { weight: weight.clone() })?)
}
