//! The gated MLP of Llama-family models: `down(silu(gate(x)) * up(x))`.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use kvault_kernels::silu_mul;

use super::Linear;
use crate::config::ModelConfig;
use crate::weights::{WeightName, WeightSource};

#[derive(Clone, Debug)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub fn load(cfg: &ModelConfig, layer: usize, w: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: Linear::load(w, WeightName::Gate(layer), None, i, h, dtype, device)?,
            up: Linear::load(w, WeightName::Up(layer), None, i, h, dtype, device)?,
            down: Linear::load(w, WeightName::Down(layer), None, h, i, dtype, device)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = silu_mul(&self.gate.forward(x)?, &self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}
