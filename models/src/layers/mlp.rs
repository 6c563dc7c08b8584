//! The gated MLP of Llama-family models: `down(silu(gate(x)) * up(x))`.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use kvault_kernels::silu_mul;

use super::{Linear, LinearGroup};
use crate::config::ModelConfig;
use crate::weights::{WeightName, WeightSource};

#[derive(Clone, Debug)]
pub struct Mlp {
    /// gate and up (one matmul when their weights stack).
    gate_up: LinearGroup,
    down: Linear,
}

impl Mlp {
    pub fn load(cfg: &ModelConfig, layer: usize, w: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up: LinearGroup::new(vec![
                Linear::load(w, WeightName::Gate(layer), None, i, h, dtype, device)?,
                Linear::load(w, WeightName::Up(layer), None, i, h, dtype, device)?,
            ])?,
            down: Linear::load(w, WeightName::Down(layer), None, h, i, dtype, device)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = self.gate_up.forward(x)?.try_into().map_err(|_| anyhow::anyhow!("two projections expected"))?;
        let gated = silu_mul(&gate, &up)?;
        self.down.forward(&gated)
    }
}
