//! The gate itself: parameters of one layer and the forward that turns the layer's normalized
//! hidden states into `log β` per KV head.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// One layer's gate (the paper's `rg` variant): `W1: [hidden, d_model]`, `b1: [hidden]`,
/// `W2: [kv_heads, hidden]` (no bias of its own), and a per-KV-head bias `b: [kv_heads]`.
#[derive(Clone, Debug)]
pub struct LayerGate {
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub bias: Tensor,
}

impl LayerGate {
    /// `x`: `[tokens, d_model]` (the input of the q/k/v projections) → `log β`: `[tokens, kv_heads]`.
    /// Computed in the gate's dtype (f32), whatever the model's compute dtype.
    pub fn log_beta(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.w1.dtype())?;
        let h = x.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?.silu()?;
        let z = h.matmul(&self.w2.t()?)?.broadcast_add(&self.bias)?;
        log_sigmoid(&z)
    }

    pub fn hidden(&self) -> usize {
        self.w1.dim(0).unwrap_or(0)
    }
}

/// `log σ(z) = −relu(−z) − log(1 + e^{−|z|})`: stable for large |z| either way, and built from
/// ops that all have a backward in candle (its fused ops do not all have one).
pub fn log_sigmoid(z: &Tensor) -> Result<Tensor> {
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((z.neg()?.relu()?.neg()? - soft)?)
}

/// The gates of every layer of one model.
#[derive(Clone, Debug)]
pub struct RetentionGates {
    pub layers: Vec<LayerGate>,
}

impl RetentionGates {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Hidden width of the gate MLP (the same in every layer).
    pub fn hidden(&self) -> usize {
        self.layers.first().map_or(0, LayerGate::hidden)
    }

    /// Checks that these gates fit a model with `num_layers`, `d_model` and `kv_heads`; the
    /// error names what differs, so gates trained for another model are a one-line error.
    pub fn check_fits(&self, num_layers: usize, d_model: usize, kv_heads: usize) -> Result<()> {
        ensure!(
            self.layers.len() == num_layers,
            "the gates have {} layers, the model {num_layers} (gates trained for another model?)",
            self.layers.len()
        );
        for (l, g) in self.layers.iter().enumerate() {
            let hidden = g.hidden();
            let want: [(&str, &Tensor, Vec<usize>); 4] = [
                ("linear1.weight", &g.w1, vec![hidden, d_model]),
                ("linear1.bias", &g.b1, vec![hidden]),
                ("linear2.weight", &g.w2, vec![kv_heads, hidden]),
                ("bias", &g.bias, vec![kv_heads]),
            ];
            for (name, t, shape) in want {
                ensure!(
                    t.dims() == shape.as_slice(),
                    "layer {l} gate {name} has shape {:?}, the model needs {shape:?} (d_model {d_model}, {kv_heads} KV heads; gates trained for another model?)",
                    t.dims()
                );
            }
        }
        Ok(())
    }

    /// The same gates as f32 tensors (inference and training compute the gate in f32).
    pub fn to_f32(&self) -> Result<Self> {
        let conv = |t: &Tensor| t.to_dtype(DType::F32);
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|g| Ok(LayerGate { w1: conv(&g.w1)?, b1: conv(&g.b1)?, w2: conv(&g.w2)?, bias: conv(&g.bias)? }))
                .collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_sigmoid_matches_the_definition_and_stays_finite_at_the_extremes() {
        let z = Tensor::new(&[-200f32, -3.0, 0.0, 2.5, 18.0, 200.0], &Device::Cpu).unwrap();
        let got: Vec<f32> = log_sigmoid(&z).unwrap().to_vec1().unwrap();
        for (g, z) in got.iter().zip([-200f64, -3.0, 0.0, 2.5, 18.0, 200.0]) {
            let want = -(1.0 + (-z).exp()).ln();
            let want = if want.is_finite() { want } else { z };
            assert!((*g as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "z {z}: {g} vs {want}");
        }
    }
}
