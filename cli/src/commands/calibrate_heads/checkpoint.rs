//! Checkpoints of a HardKuma run: (a, b), AdamW's moments, λ and the constraint's EMA (as
//! exact decimal strings: they are f64 and a resumed run must replay the same steps), the step,
//! and the settings a `--resume` must not change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Var;
use kvault_models::training::lychee::Lagrange;

use crate::commands::train_gates::checkpoint::{restore_params, save_params};
use crate::commands::train_gates::optim::AdamW;

const NAMES: [&str; 2] = ["kuma_a", "kuma_b"];

/// `roles.safetensors` → `roles.ckpt.safetensors`.
pub fn path_for(out: &Path) -> PathBuf {
    out.with_extension("ckpt.safetensors")
}

fn names() -> Vec<String> {
    NAMES.map(String::from).to_vec()
}

#[allow(clippy::too_many_arguments)]
pub fn save(path: &Path, params: &[Var], opt: &AdamW, lagrange: &Lagrange, step: usize, planned_steps: usize, settings: &BTreeMap<String, String>, wall: f64) -> Result<()> {
    let mut md = settings.clone();
    md.insert("checkpoint_step".into(), step.to_string());
    md.insert("planned_steps".into(), planned_steps.to_string());
    md.insert("checkpoint_wall_seconds".into(), format!("{wall:.1}"));
    md.insert("lagrange_lambda".into(), format!("{:?}", lagrange.lambda));
    md.insert("lagrange_ema".into(), format!("{:?}", lagrange.ema));
    save_params(path, &names(), params, opt, md)
}

/// Restores everything; returns (the step to continue from, wall seconds so far, the step
/// count the checkpointed run was planned for, if recorded).
pub fn restore(path: &Path, params: &[Var], opt: &mut AdamW, lagrange: &mut Lagrange, settings: &BTreeMap<String, String>) -> Result<(usize, f64, Option<usize>)> {
    let md = restore_params(path, &names(), params, opt, settings)?;
    let num = |k: &str| -> Result<f64> { md.get(k).and_then(|s| s.parse().ok()).with_context(|| format!("--resume {}: no {k}", path.display())) };
    lagrange.lambda = num("lagrange_lambda")?;
    lagrange.ema = num("lagrange_ema")?;
    let step = num("checkpoint_step")? as usize;
    let planned = md.get("planned_steps").and_then(|s| s.parse().ok()).or_else(|| md.get("steps").and_then(|s| s.parse().ok()));
    Ok((step, num("checkpoint_wall_seconds").unwrap_or(0.0), planned))
}
