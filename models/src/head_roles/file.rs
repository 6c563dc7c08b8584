//! The head roles file: safetensors with tensor `retrieval` U8 `[num_layers, num_kv_heads]`
//! (1 = retrieval), optional F32 `kuma_a`, `kuma_b` (HardKuma parameters) and `score` (the
//! heuristic's ranking), all `[L, H]`, and `__metadata__` strings (`format`, `method`, `model`,
//! `command`, `data`, `steps`, `density`, `wall_seconds`, …). Every bad input is a one-line
//! error that starts with the file's name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;

/// The documented name beside a model (for a GGUF file: in its folder).
pub const HEAD_ROLES_FILE_NAME: &str = "lychee_heads.safetensors";

/// The `format` metadata string.
pub const FORMAT: &str = "kvault LycheeDecode head roles";

/// Where `model`'s roles would be if they sit beside it.
pub fn head_roles_beside_model(model: &Path) -> PathBuf {
    crate::source::beside_model(model, HEAD_ROLES_FILE_NAME)
}

/// A roles file's contents. `retrieval` is row-major `[num_layers, num_kv_heads]`.
#[derive(Clone, Debug)]
pub struct HeadRolesFile {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub retrieval: Vec<bool>,
    pub metadata: BTreeMap<String, String>,
    /// HardKuma `(a, b)`, each F32 `[L, H]` (hardkuma files).
    pub kuma: Option<(Tensor, Tensor)>,
    /// The heuristic's score, F32 `[L, H]` (heuristic files).
    pub score: Option<Tensor>,
}

impl HeadRolesFile {
    /// Roles without optional tensors; errors when the sizes disagree or layer 0 has a sparse head.
    pub fn new(num_layers: usize, num_kv_heads: usize, retrieval: Vec<bool>) -> Result<Self> {
        let f = Self { num_layers, num_kv_heads, retrieval, metadata: BTreeMap::new(), kuma: None, score: None };
        f.validate()?;
        Ok(f)
    }

    /// INTEGRATION POINT: the parts `kvault_kernels::HeadRoles::new(num_layers, num_kv_heads,
    /// retrieval)` takes, so the engine converts a loaded file in one line.
    pub fn roles_parts(&self) -> (usize, usize, Vec<bool>) {
        (self.num_layers, self.num_kv_heads, self.retrieval.clone())
    }

    pub fn is_retrieval(&self, layer: usize, kv_head: usize) -> bool {
        self.retrieval[layer * self.num_kv_heads + kv_head]
    }

    pub fn layer(&self, layer: usize) -> &[bool] {
        &self.retrieval[layer * self.num_kv_heads..(layer + 1) * self.num_kv_heads]
    }

    pub fn num_retrieval(&self) -> usize {
        self.retrieval.iter().filter(|&&r| r).count()
    }

    /// Retrieval heads outside layer 0 over all heads outside layer 0 (the calibrated density;
    /// layer 0 is retrieval by rule, not by choice).
    pub fn density(&self) -> f64 {
        let rest = &self.retrieval[self.num_kv_heads.min(self.retrieval.len())..];
        if rest.is_empty() {
            return 0.0;
        }
        rest.iter().filter(|&&r| r).count() as f64 / rest.len() as f64
    }

    /// One-line error naming what differs when these roles are not for a model of this shape.
    pub fn check_fits(&self, num_layers: usize, num_kv_heads: usize) -> Result<()> {
        if (self.num_layers, self.num_kv_heads) != (num_layers, num_kv_heads) {
            bail!(
                "head roles for {} layers × {} KV heads, but the model has {num_layers} layers × {num_kv_heads} KV heads (roles of another model?)",
                self.num_layers,
                self.num_kv_heads
            );
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let (l, h) = (self.num_layers, self.num_kv_heads);
        if l == 0 || h == 0 || self.retrieval.len() != l * h {
            bail!("{} role entries for {l} layers × {h} KV heads", self.retrieval.len());
        }
        let sparse0: Vec<String> = (0..h).filter(|&k| !self.retrieval[k]).map(|k| k.to_string()).collect();
        if !sparse0.is_empty() {
            bail!("layer 0 must be all retrieval, but KV head(s) {} are sparse", sparse0.join(", "));
        }
        for (name, t) in [("kuma_a", self.kuma.as_ref().map(|k| &k.0)), ("kuma_b", self.kuma.as_ref().map(|k| &k.1)), ("score", self.score.as_ref())] {
            if let Some(t) = t {
                if t.dims() != [l, h] {
                    bail!("`{name}` has shape {:?}, `retrieval` has [{l}, {h}]", t.dims());
                }
            }
        }
        Ok(())
    }
}

fn f32_tensor(st: &SafeTensors<'_>, name: &str) -> Result<Option<Tensor>> {
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    if view.dtype() != StDtype::F32 {
        bail!("`{name}` is {:?}, expected F32", view.dtype());
    }
    Ok(Some(Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu)?))
}

/// Parses a roles file from bytes; `origin` names it in errors.
pub fn read_head_roles(bytes: &[u8], origin: &str) -> Result<HeadRolesFile> {
    let invalid = |e: safetensors::SafeTensorError| anyhow::anyhow!("{origin}: not a valid safetensors file ({e})");
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    let parse = || -> Result<HeadRolesFile> {
        let view = st.tensor("retrieval").map_err(|_| anyhow::anyhow!("holds no `retrieval` tensor (not a head roles file)"))?;
        let shape = view.shape().to_vec();
        if view.dtype() != StDtype::U8 || shape.len() != 2 {
            bail!("`retrieval` is {:?} {shape:?}, expected U8 [layers, kv_heads]", view.dtype());
        }
        if let Some(bad) = view.data().iter().find(|&&v| v > 1) {
            bail!("`retrieval` holds {bad}; only 0 (sparse) and 1 (retrieval) are roles");
        }
        let retrieval = view.data().iter().map(|&v| v == 1).collect();
        let kuma = match (f32_tensor(&st, "kuma_a")?, f32_tensor(&st, "kuma_b")?) {
            (Some(a), Some(b)) => Some((a, b)),
            (None, None) => None,
            _ => bail!("has only one of `kuma_a` and `kuma_b`"),
        };
        let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
        let f = HeadRolesFile { num_layers: shape[0], num_kv_heads: shape[1], retrieval, metadata, kuma, score: f32_tensor(&st, "score")? };
        f.validate()?;
        Ok(f)
    };
    parse().with_context(|| origin.to_string())
}

/// Reads a roles file from disk.
pub fn load_head_roles(path: &Path) -> Result<HeadRolesFile> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the head roles file", path.display()))?;
    read_head_roles(&bytes, &path.display().to_string())
}

/// Writes `roles` (its metadata, with `format` set) atomically: a temporary file renamed into place.
pub fn save_head_roles(roles: &HeadRolesFile, path: &Path) -> Result<()> {
    roles.validate().with_context(|| format!("{}: refusing to write", path.display()))?;
    let shape = vec![roles.num_layers, roles.num_kv_heads];
    let mut buffers: Vec<(&str, StDtype, Vec<u8>)> = vec![("retrieval", StDtype::U8, roles.retrieval.iter().map(|&r| r as u8).collect())];
    let f32_bytes = |t: &Tensor| -> Result<Vec<u8>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()) };
    if let Some((a, b)) = &roles.kuma {
        buffers.push(("kuma_a", StDtype::F32, f32_bytes(a)?));
        buffers.push(("kuma_b", StDtype::F32, f32_bytes(b)?));
    }
    if let Some(s) = &roles.score {
        buffers.push(("score", StDtype::F32, f32_bytes(s)?));
    }
    let views = buffers.iter().map(|(n, d, b)| Ok((n.to_string(), TensorView::new(*d, shape.clone(), b)?))).collect::<Result<Vec<_>>>()?;
    let mut md: HashMap<String, String> = roles.metadata.clone().into_iter().collect();
    md.insert("format".into(), FORMAT.into());
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file(views, Some(md), &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
