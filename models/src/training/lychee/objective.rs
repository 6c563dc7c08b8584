//! The HardKuma objective (ALGORITHMS.md §2.3): distillation on the final normed hidden state
//! of the answer rows, plus the density constraint under a Lagrange multiplier that grows
//! multiplicatively while the expected density exceeds the target.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::kuma::p_nonzero;

/// `Σ_rows mean_dim (h_teacher − h_student)² / rows`.
pub fn distillation(teacher: &Tensor, student: &Tensor) -> Result<Tensor> {
    Ok((teacher - student)?.sqr()?.mean_all()?)
}

/// λ and the EMA of the constraint: the state the density term carries between steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lagrange {
    pub target: f64,
    pub lambda: f64,
    pub ema: f64,
}

/// One step's density term and what the progress line reports.
pub struct DensityTerm {
    /// `stopgrad(λ) · c_use` (tracked).
    pub term: Tensor,
    /// ρ: the expected share of non-sparse heads outside layer 0.
    pub density: f64,
    /// `relu(ρ − ρ*)` (tracked; for gradient checks).
    pub constraint: Tensor,
}

pub const LAMBDA_INIT: f64 = 2.0;
pub const LAMBDA_LR: f64 = 1e-3;
pub const EMA_DECAY: f64 = 0.9;

impl Lagrange {
    pub fn new(target: f64) -> Self {
        Self { target, lambda: LAMBDA_INIT, ema: 0.0 }
    }

    /// ρ over layers 1.. of `a, b: [layers, kv]`, then (in the official code's order) the EMA,
    /// the value-of-EMA/gradient-of-c constraint, λ's update, and the term.
    pub fn step(&mut self, a: &Tensor, b: &Tensor) -> Result<DensityTerm> {
        let layers = a.dim(0)?;
        let nz = p_nonzero(&a.narrow(0, 1, layers - 1)?, &b.narrow(0, 1, layers - 1)?)?;
        let rho = nz.mean_all()?;
        let density = rho.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let constraint = (rho - self.target)?.relu()?;
        let c = (density - self.target).max(0.0);
        self.ema = EMA_DECAY * self.ema + (1.0 - EMA_DECAY) * c;
        // c_use = c + stopgrad(ema − c): the EMA's value, c's gradient.
        let c_use = (&constraint + (self.ema - c))?;
        self.lambda = (self.lambda * (LAMBDA_LR * self.ema).exp()).clamp(1e-12, 20.0);
        Ok(DensityTerm { term: (c_use * self.lambda)?, density, constraint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_term_has_the_emas_value_and_the_constraints_gradient() {
        let a = Var::from_tensor(&Tensor::new(&[[1.0f64, 1.0], [0.7, 1.3], [1.0, 0.4]], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[[1.0f64, 1.0], [1.0, 2.0], [0.5, 1.0]], &Device::Cpu).unwrap()).unwrap();
        let mut lag = Lagrange::new(0.1);
        let t = lag.step(&a, &b).unwrap();
        let c = t.density - 0.1;
        assert!(c > 0.0);
        assert!((lag.ema - 0.1 * c).abs() < 1e-12);
        assert!((lag.lambda - 2.0 * (1e-3 * lag.ema).exp()).abs() < 1e-12);
        assert!((t.term.to_scalar::<f64>().unwrap() - lag.lambda * lag.ema).abs() < 1e-12);
        let g_term = t.term.backward().unwrap();
        let g_c = t.constraint.backward().unwrap();
        let (ga, gc) = (g_term.get(a.as_tensor()).unwrap(), g_c.get(a.as_tensor()).unwrap());
        let ratio = (ga / lag.lambda).unwrap().sub(gc).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(ratio < 1e-12);
        // Layer 0 is not in the density: its parameters get no gradient.
        let row0: Vec<f64> = gc.get(0).unwrap().to_vec1().unwrap();
        assert_eq!(row0, vec![0.0, 0.0]);
        // Below the target, no constraint and no gradient; λ keeps its value while the EMA decays.
        let mut low = Lagrange::new(0.99);
        let t = low.step(&a, &b).unwrap();
        assert_eq!(t.term.to_scalar::<f64>().unwrap(), 0.0);
    }
}
