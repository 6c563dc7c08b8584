//! Safetensors weights: one file, a sharded set named by `model.safetensors.index.json`, or a
//! byte slice compiled into the binary (the embedded default model). Files are memory-mapped;
//! a tensor is copied only when it is converted to the compute dtype on its device.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::{Load, MmapedSafetensors, SliceSafetensors};
use candle_core::{DType, Device, Tensor};

use super::{MatrixWeight, WeightName, WeightSource};

enum Storage {
    Mapped(MmapedSafetensors),
    Static(SliceSafetensors<'static>),
}

pub struct SafetensorsWeights {
    storage: Storage,
    /// Named in errors: the folder or file the weights came from.
    origin: String,
}

impl SafetensorsWeights {
    /// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let files = safetensors_files(dir)?;
        for f in &files {
            if !f.is_file() {
                bail!("{}: weight file is missing", f.display());
            }
        }
        // SAFETY: the files are mapped read-only; kvault never writes model files, and a model
        // replaced underneath a running process is outside what any mmap-based loader can guard.
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", describe(&files)))?;
        Ok(Self { storage: Storage::Mapped(mapped), origin: describe(&files) })
    }

    pub fn from_static(bytes: &'static [u8], origin: &str) -> Result<Self> {
        let st = SliceSafetensors::new(bytes)
            .map_err(|e| anyhow::anyhow!("{origin}: not a valid safetensors file: {e}"))?;
        Ok(Self { storage: Storage::Static(st), origin: origin.to_string() })
    }

    fn view_load(&self, name: &str, device: &Device) -> Result<Option<(Vec<usize>, Tensor)>> {
        let result = match &self.storage {
            Storage::Mapped(m) => m.get(name).ok().map(|v| (v.shape().to_vec(), v.load(device))),
            Storage::Static(s) => s.get(name).ok().map(|v| (v.shape().to_vec(), v.load(device))),
        };
        match result {
            None => Ok(None),
            Some((shape, t)) => {
                let t = t.map_err(|e| anyhow::anyhow!("{}: tensor {name} cannot be read: {e}", self.origin))?;
                Ok(Some((shape, t)))
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match &self.storage {
            Storage::Mapped(m) => m.get(name).is_ok(),
            Storage::Static(s) => s.get(name).is_ok(),
        }
    }
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: WeightName) -> bool {
        self.has(&name.hf())
    }

    fn dense(&self, name: WeightName, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let key = name.hf();
        let (found, t) = self
            .view_load(&key, device)?
            .with_context(|| format!("{}: tensor {key} is missing", self.origin))?;
        if found != shape {
            bail!("{}: tensor {key} has shape {found:?}, expected {shape:?}", self.origin);
        }
        Ok(t.to_dtype(dtype)?)
    }

    fn matrix(&self, name: WeightName, out_dim: usize, in_dim: usize, dtype: DType, device: &Device) -> Result<MatrixWeight> {
        Ok(MatrixWeight::Dense(self.dense(name, &[out_dim, in_dim], dtype, device)?))
    }
}

/// The weight files of an HF folder: the shards named by the index, or the single file.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
        let mut shards = BTreeSet::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .with_context(|| format!("{}: shard of {tensor} is not a string", index.display()))?;
            // A shard name must stay inside the folder.
            if file.contains("..") || Path::new(file).is_absolute() {
                bail!("{}: shard path {file} leaves the model folder", index.display());
            }
            shards.insert(file.to_string());
        }
        if shards.is_empty() {
            bail!("{}: `weight_map` names no shards", index.display());
        }
        return Ok(shards.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display())
}

fn describe(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => format!("{} (+{} more shards)", many[0].display(), many.len() - 1),
    }
}
