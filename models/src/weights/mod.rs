//! Where weights come from: memory-mapped safetensors (HF folders, single or sharded), the
//! embedded default model's bytes, or a GGUF file whose matrices stay quantized.
//!
//! Owns: mapping a logical weight (`WeightName`) to a format's tensor name, reading it, checking
//! its shape, and handing it over dense (in the compute dtype) or quantized. Also undoes
//! llama.cpp's Q/K row permutation so every format feeds the same rotate-half RoPE.
//!
//! Must not know: how layers use the weights, requests, or anything about attention.

mod gguf;
mod names;
mod safetensors;

use std::sync::Arc;

use anyhow::Result;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use kvault_kernels::MatmulPrecision;

pub use self::gguf::{GgufFile, GgufWeights};
pub(crate) use self::gguf::{md_f32, md_u64};
pub use self::names::WeightName;
pub use self::safetensors::SafetensorsWeights;

/// A matrix `[out, in]` as it will be multiplied: dense in the compute dtype, or quantized.
#[derive(Clone, Debug)]
pub enum MatrixWeight {
    Dense(Tensor),
    /// Kept quantized; the precision its matmul gives the activations on CPU.
    Quantized(Arc<QTensor>, MatmulPrecision),
}

/// A source of named weights. Every error names the file and the tensor.
pub trait WeightSource {
    /// Whether the weight exists (optional weights: biases, a separate lm_head, q/k norms).
    fn contains(&self, name: WeightName) -> bool;
    /// A dense tensor of exactly `shape`, converted to `dtype` on `device`.
    fn dense(&self, name: WeightName, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;
    /// A `[out, in]` matrix; quantized sources keep it quantized unless told to dequantize.
    fn matrix(&self, name: WeightName, out_dim: usize, in_dim: usize, dtype: DType, device: &Device)
        -> Result<MatrixWeight>;
}

/// Row permutation llama.cpp's converter applies to Q and K of llama-family models so its RoPE
/// can rotate adjacent pairs; `unpermute_rows` maps its row order back to HF's rotate-half order.
/// For a head of size `d`, GGUF row `r` holds HF row `perm(r)`: pairs (2i, 2i+1) came from
/// (i, i + d/2).
pub(crate) fn hf_row_for_gguf_row(row: usize, head_dim: usize) -> usize {
    let head = row / head_dim;
    let r = row % head_dim;
    let half = head_dim / 2;
    let hf = if r % 2 == 0 { r / 2 } else { half + r / 2 };
    head * head_dim + hf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_row_permutation_is_a_bijection_matching_the_reference_formula() {
        // reference.json: w.reshape(n_head, d/2, 2, d_in).swapaxes(1, 2).reshape(d, d_in)
        // maps GGUF layout to HF layout: HF row (h, j, i) = GGUF row (h, i, j).
        let (n_head, head_dim) = (3, 8);
        let mut seen = vec![false; n_head * head_dim];
        for gguf_row in 0..n_head * head_dim {
            let h = gguf_row / head_dim;
            let i = (gguf_row % head_dim) / 2;
            let j = gguf_row % 2;
            let hf_expected = h * head_dim + j * (head_dim / 2) + i;
            let hf = hf_row_for_gguf_row(gguf_row, head_dim);
            assert_eq!(hf, hf_expected);
            assert!(!seen[hf]);
            seen[hf] = true;
        }
    }
}
