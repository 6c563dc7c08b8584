//! Checkpoints of a HardKuma run: (a, b), AdamW's moments, λ and the constraint's EMA (as
//! exact decimal strings: they are f64 and a resumed run must replay the same steps), the step,
//! and the settings a `--resume` must not change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use kvault_models::gates::file::{read_all, save_tensors, OPTIMIZER_PREFIX};
use kvault_models::training::lychee::Lagrange;

use crate::commands::train_gates::optim::AdamW;

const NAMES: [&str; 2] = ["kuma_a", "kuma_b"];

/// `roles.safetensors` → `roles.ckpt.safetensors`.
pub fn path_for(out: &Path) -> PathBuf {
    out.with_extension("ckpt.safetensors")
}

#[allow(clippy::too_many_arguments)]
pub fn save(path: &Path, params: &[Var], opt: &AdamW, lagrange: &Lagrange, step: usize, planned_steps: usize, settings: &BTreeMap<String, String>, wall: f64) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = NAMES.iter().map(|n| n.to_string()).zip(params.iter().map(|p| p.as_tensor().clone())).collect();
    for (n, (m, v)) in NAMES.iter().zip(&opt.moments) {
        named.push((format!("{OPTIMIZER_PREFIX}m.{n}"), m.clone()));
        named.push((format!("{OPTIMIZER_PREFIX}v.{n}"), v.clone()));
    }
    let mut md = settings.clone();
    md.insert("checkpoint_step".into(), step.to_string());
    md.insert("planned_steps".into(), planned_steps.to_string());
    md.insert("checkpoint_wall_seconds".into(), format!("{wall:.1}"));
    md.insert("lagrange_lambda".into(), format!("{:?}", lagrange.lambda));
    md.insert("lagrange_ema".into(), format!("{:?}", lagrange.ema));
    save_tensors(&named, DType::F32, &md, path)
}

/// Restores everything; returns (the step to continue from, wall seconds so far, the step
/// count the checkpointed run was planned for, if recorded).
pub fn restore(path: &Path, params: &[Var], opt: &mut AdamW, lagrange: &mut Lagrange, settings: &BTreeMap<String, String>) -> Result<(usize, f64, Option<usize>)> {
    let (tensors, md) = read_all(path, &Device::Cpu).context("--resume")?;
    for (k, want) in settings {
        let got = md.get(k).map(String::as_str).unwrap_or("(missing)");
        if got != want {
            bail!("--resume {}: checkpoint was made with {k} = {got}, this run has {want}", path.display());
        }
    }
    let get = |n: &str| tensors.get(n).cloned().with_context(|| format!("--resume {}: no tensor {n}", path.display()));
    for ((n, p), (m, v)) in NAMES.iter().zip(params).zip(opt.moments.iter_mut()) {
        p.set(&get(n)?)?;
        *m = get(&format!("{OPTIMIZER_PREFIX}m.{n}"))?;
        *v = get(&format!("{OPTIMIZER_PREFIX}v.{n}"))?;
    }
    let num = |k: &str| -> Result<f64> { md.get(k).and_then(|s| s.parse().ok()).with_context(|| format!("--resume {}: no {k}", path.display())) };
    lagrange.lambda = num("lagrange_lambda")?;
    lagrange.ema = num("lagrange_ema")?;
    let step = num("checkpoint_step")? as usize;
    let planned = md.get("planned_steps").and_then(|s| s.parse().ok()).or_else(|| md.get("steps").and_then(|s| s.parse().ok()));
    Ok((step, num("checkpoint_wall_seconds").unwrap_or(0.0), planned))
}
