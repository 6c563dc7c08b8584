//! Checkpoints of a training run: the gate parameters and AdamW's moments in f32, plus the step
//! and the settings that must not change on `--resume` (a resumed run with another budget or
//! width would silently be a different run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use kvault_models::gates::file::{read_all, save_tensors, OPTIMIZER_PREFIX};

use super::optim::AdamW;

/// `gates.safetensors` → `gates.ckpt.safetensors`.
pub fn path_for(out: &Path) -> PathBuf {
    out.with_extension("ckpt.safetensors")
}

pub fn save(path: &Path, names: &[String], params: &[Var], opt: &AdamW, step: usize, settings: &BTreeMap<String, String>, wall: f64) -> Result<()> {
    let mut md = settings.clone();
    md.insert("checkpoint_step".into(), step.to_string());
    md.insert("checkpoint_wall_seconds".into(), format!("{wall:.1}"));
    save_params(path, names, params, opt, md)
}

/// Restores parameters and moments; returns (the step to continue from, wall seconds so far).
pub fn restore(path: &Path, names: &[String], params: &[Var], opt: &mut AdamW, settings: &BTreeMap<String, String>) -> Result<(usize, f64)> {
    let md = restore_params(path, names, params, opt, settings)?;
    let step = md.get("checkpoint_step").and_then(|s| s.parse().ok()).with_context(|| format!("--resume {}: no checkpoint_step", path.display()))?;
    let wall = md.get("checkpoint_wall_seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    Ok((step, wall))
}

/// What every optimizer checkpoint holds (this command's and `calibrate-heads`'): the named
/// parameters and their AdamW moments in f32, with `metadata`.
pub(crate) fn save_params(path: &Path, names: &[String], params: &[Var], opt: &AdamW, metadata: BTreeMap<String, String>) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = names.iter().cloned().zip(params.iter().map(|p| p.as_tensor().clone())).collect();
    for (n, (m, v)) in names.iter().zip(&opt.moments) {
        named.push((format!("{OPTIMIZER_PREFIX}m.{n}"), m.clone()));
        named.push((format!("{OPTIMIZER_PREFIX}v.{n}"), v.clone()));
    }
    save_tensors(&named, DType::F32, &metadata, path)
}

/// Reads a checkpoint written by [`save_params`], refuses one made with other `settings` (each
/// must match its metadata exactly), restores the parameters and moments and returns the
/// metadata for the caller's own fields.
pub(crate) fn restore_params(
    path: &Path,
    names: &[String],
    params: &[Var],
    opt: &mut AdamW,
    settings: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let (tensors, md) = read_all(path, &Device::Cpu).context("--resume")?;
    for (k, want) in settings {
        let got = md.get(k).map(String::as_str).unwrap_or("(missing)");
        if got != want {
            bail!("--resume {}: checkpoint was made with {k} = {got}, this run has {want}", path.display());
        }
    }
    let get = |n: &str| tensors.get(n).cloned().with_context(|| format!("--resume {}: no tensor {n}", path.display()));
    for ((n, p), (m, v)) in names.iter().zip(params).zip(opt.moments.iter_mut()) {
        p.set(&get(n)?)?;
        *m = get(&format!("{OPTIMIZER_PREFIX}m.{n}"))?;
        *v = get(&format!("{OPTIMIZER_PREFIX}v.{n}"))?;
    }
    Ok(md.into_iter().collect())
}
