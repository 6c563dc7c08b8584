//! Linear layers that read the same input (q/k/v, gate/up), run as one matmul when they can.
//!
//! Why: each quantized matmul reads x and, on the int8/int16 paths, quantizes it first (a tenth
//! of a batched step in `perf`), and each is one more parallel loop per layer; q/k/v and
//! gate/up did that three and two times over the same x. Stacked, the weights are one matrix
//! whose output holds the parts side by side — bit for bit what the parts give
//! (`QuantizedMatrix::stack`), so nothing downstream can tell.
//!
//! Must not know: what the parts mean (attention, MLP) or how their outputs are used.

use anyhow::Result;
use candle_core::Tensor;

use super::Linear;

#[derive(Clone, Debug)]
pub enum LinearGroup {
    /// One matmul; the parts' output widths, in order.
    Stacked(Linear, Vec<usize>),
    /// Weights that do not stack (dense, other devices, mixed formats): one matmul each.
    Separate(Vec<Linear>),
}

impl LinearGroup {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        let widths = parts.iter().map(Linear::out_dim).collect();
        Ok(match Linear::stack(&parts)? {
            Some(stacked) => Self::Stacked(stacked, widths),
            None => Self::Separate(parts),
        })
    }

    /// `x`: `[tokens, in_dim]` → each part's `[tokens, out_dim]`, contiguous, in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Self::Stacked(linear, widths) => {
                let y = linear.forward(x)?;
                let mut at = 0;
                let mut out = Vec::with_capacity(widths.len());
                for &w in widths {
                    out.push(y.narrow(1, at, w)?.contiguous()?);
                    at += w;
                }
                Ok(out)
            }
        }
    }
}
