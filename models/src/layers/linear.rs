//! A linear layer `y = x Wᵀ (+ b)` whose weight is dense or stays GGUF-quantized.

use anyhow::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use kvault_kernels::QuantizedMatrix;

use crate::weights::{MatrixWeight, WeightName, WeightSource};

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    out_dim: usize,
}

#[derive(Clone, Debug)]
enum Weight {
    Dense(Tensor),
    /// CPU: kvault's kernel (batch-invariant; exact w.r.t. the dequantized weights, or with
    /// 8-bit activations under `MatmulPrecision::Int8`). Elsewhere: candle's quantized matmul.
    QuantizedCpu(QuantizedMatrix),
    Quantized(QMatMul),
}

impl Linear {
    pub fn from_matrix(weight: MatrixWeight, bias: Option<Tensor>, out_dim: usize) -> Result<Self> {
        let weight = match weight {
            MatrixWeight::Dense(w) => Weight::Dense(w),
            MatrixWeight::Quantized(q, precision) if q.device().is_cpu() => {
                Weight::QuantizedCpu(QuantizedMatrix::with_precision(q, precision)?)
            }
            MatrixWeight::Quantized(q, _) => Weight::Quantized(QMatMul::from_arc(q)?),
        };
        Ok(Self { weight, bias, out_dim })
    }

    /// Loads `name` as `[out_dim, in_dim]`, with `bias` if given and present.
    pub fn load(
        weights: &dyn WeightSource,
        name: WeightName,
        bias: Option<WeightName>,
        out_dim: usize,
        in_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let matrix = weights.matrix(name, out_dim, in_dim, dtype, device)?;
        let bias = match bias {
            Some(b) => Some(weights.dense(b, &[out_dim], dtype, device)?),
            None => None,
        };
        Self::from_matrix(matrix, bias, out_dim)
    }

    /// One layer whose output is `parts`' outputs side by side, bit for bit, when their weights
    /// stack (CPU-quantized in one format and row length, with a bias on all or none of them).
    pub fn stack(parts: &[Linear]) -> Result<Option<Linear>> {
        let mut matrices = Vec::with_capacity(parts.len());
        for p in parts {
            match &p.weight {
                Weight::QuantizedCpu(q) => matrices.push(q),
                _ => return Ok(None),
            }
        }
        let Some(stacked) = QuantizedMatrix::stack(&matrices) else { return Ok(None) };
        let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
        let bias = match biases.len() {
            0 => None,
            n if n == parts.len() => Some(Tensor::cat(&biases, 0)?),
            _ => return Ok(None),
        };
        let out_dim = parts.iter().map(|p| p.out_dim).sum();
        Ok(Some(Self { weight: Weight::QuantizedCpu(stacked), bias, out_dim }))
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x`: `[tokens, in_dim]` → `[tokens, out_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            // On CPU, kvault's batch-invariant kernel: a token's bits never depend on what else
            // is in the batch. Other devices use candle's matmul.
            Weight::Dense(w) if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 => {
                kvault_kernels::matmul_bt(&x.contiguous()?, w)?
            }
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::QuantizedCpu(q) if x.dtype() == DType::F32 => q.matmul(&x.contiguous()?)?,
            Weight::QuantizedCpu(q) => q.matmul(&x.to_dtype(DType::F32)?.contiguous()?)?.to_dtype(x.dtype())?,
            Weight::Quantized(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }
}
