//! AdamW (decoupled weight decay) with linear warm-up and global-norm gradient clipping, over the
//! gate parameters. Written here rather than taken from candle-nn because a resumable run must
//! save and restore the moment estimates, which candle-nn's optimizer keeps private.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub struct AdamW {
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// First and second moments, one pair per parameter.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(params: &[Var], lr: f64, warmup: usize, weight_decay: f64, clip: f64) -> Result<Self> {
        let moments = params.iter().map(|p| Ok((p.zeros_like()?, p.zeros_like()?))).collect::<Result<_>>()?;
        Ok(Self { lr, warmup, weight_decay, clip, beta1: 0.9, beta2: 0.999, eps: 1e-8, moments })
    }

    /// The learning rate at `step` (0-based): linear warm-up, then constant.
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup == 0 {
            self.lr
        } else {
            self.lr * ((step + 1) as f64 / self.warmup as f64).min(1.0)
        }
    }

    /// One update of `params` at `step` (0-based). Returns the gradient norm before clipping.
    pub fn step(&mut self, params: &[Var], grads: &GradStore, step: usize) -> Result<f64> {
        let gs: Vec<Tensor> = params
            .iter()
            .map(|p| grads.get(p.as_tensor()).cloned().map_or_else(|| p.zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for g in &gs {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        // Why clip: the capacity hinge switches on abruptly once a head's occupancy crosses M.
        let scale = if self.clip > 0.0 && norm > self.clip { self.clip / norm } else { 1.0 };
        let lr = self.lr_at(step);
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for ((p, g), (m, v)) in params.iter().zip(gs).zip(self.moments.iter_mut()) {
            let g = (g * scale)?;
            *m = ((&*m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + self.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?).context("updating a gate parameter")?;
        }
        Ok(norm)
    }
}
