//! `--kv-offload-ram`, `--kv-offload-dir`, `--kv-offload-disk`, `--preemption`: the flags of the
//! offload tier below the KV pool, their checks, and what `kvault doctor` reports about them.
//!
//! Owns: flag parsing and the early checks that need no model (a missing directory fails
//! before anything loads). Must not know: how the tiers work (the engine's `offload` module).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use kvault_engine::offload::fingerprint::WeightsIdentity;
use kvault_engine::offload::{OffloadConfig, PreemptionMode};
use kvault_engine::sizing::parse_bytes;
use kvault_models::source::ModelSource;

use crate::args::ModelArgs;

#[derive(Args, Debug, Clone, Default)]
pub struct OffloadArgs {
    /// Host RAM below the KV pool for prefix blocks that leave it (and for swapped-out
    /// requests), e.g. `4GiB`. Off by default.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub kv_offload_ram: Option<u64>,
    /// An existing directory for the disk tier: a prefix cache that survives restarts. Needs
    /// --kv-offload-disk.
    #[arg(long, value_name = "DIR", requires = "kv_offload_disk")]
    pub kv_offload_dir: Option<PathBuf>,
    /// Byte budget of the disk tier, e.g. `20GiB`. Needs --kv-offload-dir.
    #[arg(long, value_parser = parse_size, value_name = "SIZE", requires = "kv_offload_dir")]
    pub kv_offload_disk: Option<u64>,
    /// How a preempted request gets its KV back: recompute it, swap it to the RAM tier and
    /// back, or `auto` (per request, whichever measured bandwidth and compute say is faster).
    /// swap and auto need --kv-offload-ram.
    #[arg(long, value_enum, default_value_t = PreemptionArg::Recompute)]
    pub preemption: PreemptionArg,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PreemptionArg {
    #[default]
    Recompute,
    Swap,
    Auto,
}

impl OffloadArgs {
    /// The engine's offload settings; checks what can be checked before loading the model.
    pub fn config(&self, model: &ModelArgs) -> Result<OffloadConfig> {
        let cfg = self.config_without_weights();
        cfg.validate()?;
        if let Some(dir) = &cfg.disk_dir {
            if !dir.is_dir() {
                bail!("--kv-offload-dir {}: no such directory", dir.display());
            }
        }
        let weights = if cfg.disk_dir.is_some() { Some(weights_identity(model)?) } else { None };
        Ok(OffloadConfig { weights, ..cfg })
    }

    fn config_without_weights(&self) -> OffloadConfig {
        OffloadConfig {
            ram_bytes: self.kv_offload_ram,
            disk_dir: self.kv_offload_dir.clone(),
            disk_bytes: self.kv_offload_disk,
            preemption: match self.preemption {
                PreemptionArg::Recompute => PreemptionMode::Recompute,
                PreemptionArg::Swap => PreemptionMode::Swap,
                PreemptionArg::Auto => PreemptionMode::Auto,
            },
            weights: None,
        }
    }

    /// Lines for `kvault doctor`: the tier configuration and what the directory holds.
    pub fn report(&self) -> Vec<String> {
        let cfg = self.config_without_weights();
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut out = vec![format!(
            "kv offload: RAM {}, disk {}, preemption {}",
            cfg.ram_bytes.map_or("off".into(), gib),
            match (&cfg.disk_dir, cfg.disk_bytes) {
                (Some(d), Some(b)) => format!("{} in {}", gib(b), d.display()),
                _ => "off".into(),
            },
            cfg.preemption.as_str()
        )];
        if let Err(e) = cfg.validate() {
            out.push(format!("  problem: {e:#}"));
        }
        if let Some(dir) = &cfg.disk_dir {
            out.extend(describe_dir(dir));
        }
        out
    }
}

/// What identifies the weights in the disk tier's keys: their files' bytes.
fn weights_identity(model: &ModelArgs) -> Result<WeightsIdentity> {
    Ok(match ModelSource::parse(model.model.as_deref())? {
        ModelSource::Embedded => WeightsIdentity::Named(format!("embedded {} (kvault {})", kvault_models::embedded::NAME, env!("CARGO_PKG_VERSION"))),
        ModelSource::Gguf(path) => WeightsIdentity::Files(vec![path]),
        ModelSource::Folder(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors") || p.file_name().is_some_and(|n| n == "config.json"))
                .collect();
            files.sort();
            WeightsIdentity::Files(files)
        }
    })
}

/// Each model's subdirectory: extents, bytes, and whether a server holds its lock.
fn describe_dir(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![format!("  {}: no such directory (serve would refuse to start)", dir.display())];
    };
    let mut out = Vec::new();
    for sub in entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()) {
        let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !name.starts_with("kvault-") {
            continue;
        }
        let (mut files, mut bytes) = (0, 0);
        for e in std::fs::read_dir(&sub).into_iter().flatten().filter_map(|e| e.ok()) {
            if e.path().extension().is_some_and(|x| x == "kvx") {
                files += 1;
                bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
        let locked = std::fs::File::open(sub.join("lock")).is_ok_and(|f| fs2::FileExt::try_lock_shared(&f).is_err());
        out.push(format!(
            "  {}: {files} extent files, {:.1} MiB{}",
            sub.display(),
            bytes as f64 / (1u64 << 20) as f64,
            if locked { ", in use by a running server" } else { "" }
        ));
    }
    if out.is_empty() {
        out.push(format!("  {}: empty (nothing written yet)", dir.display()));
    }
    out
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)
}
