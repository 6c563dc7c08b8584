//! `--method hardkuma`: learns (a, b) per (layer, KV head) as LycheeDecode does (ALGORITHMS.md
//! §2.3). Each step: one training haystack; its prompt prefilled with full attention; the answer
//! rows decoded by the teacher (full attention) and by the student (every layer ≥ 1 mixing full
//! and sparse attention per KV head by a HardKuma sample z); loss = distillation + the Lagrangian
//! density term; AdamW (no weight decay, the warm-up/decay schedule) on (a, b) only.
//!
//! (a, b) are kept positive by clamping them to [`PARAM_RANGE`] after each update.
//!
//! Must not know: the file format or the comparison (the command's `mod.rs` owns those).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use kvault_models::tokenizer::Tokenizer;
use kvault_models::training::lychee::kuma::{decides_retrieval, hard_kuma, kuma_mean, U_EPS};
use kvault_models::training::lychee::{distillation, FullMixer, Lagrange, RatioMask, TrainingMixer};
use kvault_models::training::TrainingModel;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::checkpoint;
use super::haystacks::Haystacks;
use super::schedule::lr_factor;
use crate::commands::train_gates::optim::AdamW;

/// Where (a, b) stay: positive, and far from values whose powers overflow.
pub const PARAM_RANGE: (f64, f64) = (1e-3, 1e3);

pub struct Settings<'a> {
    pub steps: usize,
    pub lr: f64,
    pub target: f64,
    pub mask: RatioMask,
    pub seed: u64,
    pub checkpoint_every: usize,
    pub resume: bool,
    /// Stop after this step (checkpointed) without writing roles: a run in slices.
    pub stop_at: Option<usize>,
    pub out: &'a Path,
    /// What a resumed run must share with its checkpoint.
    pub fixed: BTreeMap<String, String>,
}

/// The learned parameters and what the run reports.
pub struct Trained {
    pub a: Tensor,
    pub b: Tensor,
    pub lagrange: Lagrange,
    /// Mean over the last (up to) 10 steps: distillation, density term, expected density.
    pub final_terms: [f64; 3],
    pub wall_seconds: f64,
    pub tokens_per_second: Option<f64>,
    /// Training wall seconds of the run before a `--resume` (0 for a fresh run).
    pub wall_before_resume: f64,
    /// The planned step count of the run a resumed checkpoint came from, when it differs.
    pub replanned_from: Option<usize>,
}

impl Trained {
    /// The paper's decision per head (layer 0 forced retrieval).
    pub fn retrieval(&self, kv_heads: usize) -> Result<Vec<bool>> {
        let (a, b) = (self.a.flatten_all()?.to_vec1::<f32>()?, self.b.flatten_all()?.to_vec1::<f32>()?);
        Ok(a.iter().zip(&b).enumerate().map(|(i, (&a, &b))| i < kv_heads || decides_retrieval(a as f64, b as f64)).collect())
    }

    /// `E[Kuma(a, b)]` per head: the ranking behind the decision.
    pub fn means(&self) -> Result<Vec<f64>> {
        let (a, b) = (self.a.flatten_all()?.to_vec1::<f32>()?, self.b.flatten_all()?.to_vec1::<f32>()?);
        Ok(a.iter().zip(&b).map(|(&a, &b)| kuma_mean(a as f64, b as f64)).collect())
    }
}

/// One step's uniform draws, from (seed, step) so a resumed run draws what an uninterrupted one would.
fn uniforms(seed: u64, step: usize, shape: (usize, usize)) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x5EED) ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let u: Vec<f32> = (0..shape.0 * shape.1).map(|_| (U_EPS + (1.0 - 2.0 * U_EPS) * rng.random::<f64>()) as f32).collect();
    Ok(Tensor::from_vec(u, shape, &Device::Cpu)?)
}

/// `None` when `stop_at` ended the run before its last step.
pub fn train(model: &TrainingModel, tokenizer: &Tokenizer, data: &Haystacks, s: &Settings) -> Result<Option<Trained>> {
    let c = &model.config;
    let shape = (c.num_layers, c.num_kv_heads);
    let a = Var::ones(shape, DType::F32, &Device::Cpu)?;
    let b = Var::ones(shape, DType::F32, &Device::Cpu)?;
    let params = [a.clone(), b.clone()];
    // lr is set per step from the schedule; no warm-up of its own, no decay, no clipping.
    let mut opt = AdamW::new(&params, s.lr, 0, 0.0, 0.0)?;
    let mut lagrange = Lagrange::new(s.target);
    let ckpt = checkpoint::path_for(s.out);
    // --steps may change on --resume (a run extended or cut short); the schedule then
    // follows the new count from the checkpoint on, and the provenance says so.
    let (first, wall_before, replanned_from) = if s.resume {
        let (step, wall, planned) = checkpoint::restore(&ckpt, &params, &mut opt, &mut lagrange, &s.fixed)?;
        eprintln!("calibrate-heads: resumed at step {step} from {}", ckpt.display());
        (step, wall, planned.filter(|&p| p != s.steps))
    } else {
        (0, 0.0, None)
    };
    let bar = ProgressBar::new(s.steps as u64);
    bar.set_position(first.min(s.steps) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}").expect("static template"));
    let log_lines = !std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut recent: Vec<[f64; 3]> = Vec::new();
    let mut tokens = 0usize;
    let mut last_ckpt = first;
    let end = s.stop_at.map_or(s.steps, |t| t.min(s.steps));
    for step in first..end {
        opt.lr = s.lr * lr_factor(step, s.steps);
        let ex = data.train(tokenizer, step)?;
        let prefix = model.prefill(&ex.prefix)?;
        let teacher = model.decode_rows(&prefix, &ex.rows, &mut FullMixer)?.detach();
        let z = hard_kuma(a.as_tensor(), b.as_tensor(), &uniforms(s.seed, step, shape)?)?;
        let student = model.decode_rows(&prefix, &ex.rows, &mut TrainingMixer::new(z, s.mask, model.dtype()))?;
        let distill = distillation(&teacher, &student)?;
        let density = lagrange.step(a.as_tensor(), b.as_tensor())?;
        let total = (&distill + &density.term)?;
        let grads = total.backward()?;
        opt.step(&params, &grads, step)?;
        for p in &params {
            p.set(&p.as_tensor().clamp(PARAM_RANGE.0, PARAM_RANGE.1)?)?;
        }
        let (d, t) = (distill.to_scalar::<f32>()? as f64, density.term.to_scalar::<f32>()? as f64);
        if !(d + t).is_finite() {
            bail!("step {step}: the loss is {}; lower --lr", d + t);
        }
        recent.push([d, t, density.density]);
        if recent.len() > 10 {
            recent.remove(0);
        }
        tokens += ex.tokens();
        let elapsed = started.elapsed().as_secs_f64();
        let msg = format!(
            "distill {d:.5} density-term {t:.4} ρ {:.3} (target {}) λ {:.4} lr {:.2e} {:.0} tok/s",
            density.density,
            s.target,
            lagrange.lambda,
            opt.lr,
            tokens as f64 / elapsed
        );
        bar.set_message(msg.clone());
        bar.inc(1);
        if log_lines {
            eprintln!("step {}/{}: {msg}", step + 1, s.steps);
        }
        if s.checkpoint_every > 0 && (step + 1) % s.checkpoint_every == 0 {
            checkpoint::save(&ckpt, &params, &opt, &lagrange, step + 1, s.steps, &s.fixed, wall_before + elapsed)?;
            last_ckpt = step + 1;
        }
    }
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();
    if last_ckpt != end.max(first) {
        checkpoint::save(&ckpt, &params, &opt, &lagrange, end.max(first), s.steps, &s.fixed, wall_before + elapsed)?;
    }
    if end < s.steps {
        eprintln!("calibrate-heads: stopped after step {end} of {} ({}); continue with --resume", s.steps, ckpt.display());
        return Ok(None);
    }
    let mean = |i: usize| recent.iter().map(|r| r[i]).sum::<f64>() / recent.len().max(1) as f64;
    Ok(Some(Trained {
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        lagrange,
        final_terms: [mean(0), mean(1), mean(2)],
        wall_seconds: wall_before + elapsed,
        tokens_per_second: (tokens > 0).then(|| tokens as f64 / elapsed),
        wall_before_resume: wall_before,
        replanned_from,
    }))
}
