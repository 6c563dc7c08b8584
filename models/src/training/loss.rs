//! The TRIM-KV training loss in the official code's form (ALGORITHMS.md §1.4):
//! `(fwKL(teacher ‖ student) + CE)/2 + λ·L_cap`, where
//! `L_cap` = the mean, over the (layer, head, t) entries whose hinge is active, of
//! `max(0, (S_t − M) / max(t − M, 1))` with `t` the 0-based position.

use anyhow::Result;
use candle_core::{DType, Tensor, D};

use super::ops::log_softmax;

/// The loss and its parts (scalars; `total` carries the gradient).
pub struct LossTerms {
    pub total: Tensor,
    pub fwkl: f32,
    pub ce: f32,
    pub capacity: f32,
}

/// `student`: `[t, vocab]` logits (tracked), `teacher_logp`: `[t, vocab]` log-probabilities of
/// the frozen model (not tracked), `labels`: the next token of each row, `occupancy`: per layer
/// `[kv, t]`, `budget`: M.
pub fn trimkv_loss(
    student: &Tensor,
    teacher_logp: &Tensor,
    labels: &[u32],
    occupancy: &[Tensor],
    budget: usize,
    capacity_weight: f64,
) -> Result<LossTerms> {
    let logq = log_softmax(student)?;
    let p = teacher_logp.exp()?;
    let fwkl = (p * (teacher_logp - &logq)?)?.sum(D::Minus1)?.mean_all()?;
    let labels_t = Tensor::new(labels, student.device())?.unsqueeze(1)?;
    let ce = logq.gather(&labels_t, 1)?.mean_all()?.neg()?;
    let quality = ((&fwkl + &ce)? * 0.5)?;
    let cap = capacity(occupancy, budget)?;
    let total = match &cap {
        Some(c) => (quality + (c * capacity_weight)?)?,
        None => quality,
    };
    let scalar = |t: &Tensor| -> Result<f32> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()? as f32) };
    Ok(LossTerms {
        fwkl: scalar(&fwkl)?,
        ce: scalar(&ce)?,
        capacity: match &cap {
            Some(c) => scalar(c)?,
            None => 0.0,
        },
        total,
    })
}

/// The capacity hinge; `None` when no entry exceeds the budget (the code's mean over active
/// entries is then empty, and contributes nothing).
fn capacity(occupancy: &[Tensor], budget: usize) -> Result<Option<Tensor>> {
    let Some(first) = occupancy.first() else { return Ok(None) };
    let (t, dtype, dev) = (first.dim(1)?, first.dtype(), first.device());
    let m = budget as f64;
    let inv_denom: Vec<f64> = (0..t).map(|i| 1.0 / (i as f64 - m).max(1.0)).collect();
    let inv_denom = Tensor::new(inv_denom, dev)?.to_dtype(dtype)?;
    let mut sum: Option<Tensor> = None;
    let mut active = 0f64;
    for s in occupancy {
        let c = (s - m)?.broadcast_mul(&inv_denom)?.relu()?;
        active += c.gt(0.0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        let part = c.sum_all()?;
        sum = Some(match sum {
            Some(acc) => (acc + part)?,
            None => part,
        });
    }
    match sum {
        Some(s) if active > 0.0 => Ok(Some((s / active)?)),
        _ => Ok(None),
    }
}
