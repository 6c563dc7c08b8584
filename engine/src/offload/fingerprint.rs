//! The model fingerprint: the half of every offload key that is not the block chain hash.
//!
//! Owns: what makes a stored block's bytes mean the same thing to this process as to the one
//! that wrote it: the weights' content, the compute dtype, the KV cache's layout as stored
//! (every per-block tensor's shape and dtype, which covers the KV dtype and any scale tensors),
//! the block size, and the kvault layout and file-format versions.
//! Must not know: files of the tier or blocks (it is a pure function of its inputs).

use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Bump when the meaning of a block's bytes changes (tensor order, what a slot holds, RoPE).
pub const LAYOUT_VERSION: u32 = 1;
/// Bump when the extent file format changes.
pub const FORMAT_VERSION: u32 = 1;

/// What the weights are, hashed by content so a re-quantized or fine-tuned file never matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsIdentity {
    /// Files whose bytes are hashed (a GGUF, or a folder's config + safetensors).
    Files(Vec<std::path::PathBuf>),
    /// Weights compiled into the binary: identified by this text (e.g. name + kvault version).
    Named(String),
}

impl WeightsIdentity {
    /// SHA-256 over each file's name-free length and bytes, in the given order.
    pub fn content_hash(&self) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        match self {
            WeightsIdentity::Named(name) => {
                h.update(b"named\0");
                h.update(name.as_bytes());
            }
            WeightsIdentity::Files(paths) => {
                h.update(b"files\0");
                for p in paths {
                    hash_file(&mut h, p)?;
                }
            }
        }
        Ok(h.finalize().into())
    }
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("hashing weights {}", path.display()))?;
    let len = f.metadata()?.len();
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(())
}

/// Layout of the KV cache as the engine stores it: per layer, per tensor, its per-block dims
/// and dtype name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLayout {
    pub block_size: usize,
    pub compute_dtype: String,
    /// Layer-major; each entry `(dims after dim 0, dtype name)`.
    pub tensors: Vec<(Vec<usize>, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelFingerprint(pub [u8; 32]);

impl ModelFingerprint {
    pub fn new(weights_hash: &[u8; 32], layout: &CacheLayout) -> ModelFingerprint {
        let mut h = Sha256::new();
        h.update(b"kvault-offload\0");
        h.update(LAYOUT_VERSION.to_le_bytes());
        h.update(FORMAT_VERSION.to_le_bytes());
        h.update(weights_hash);
        h.update((layout.block_size as u64).to_le_bytes());
        h.update(layout.compute_dtype.as_bytes());
        h.update([0]);
        h.update((layout.tensors.len() as u64).to_le_bytes());
        for (dims, dtype) in &layout.tensors {
            h.update((dims.len() as u64).to_le_bytes());
            for d in dims {
                h.update((*d as u64).to_le_bytes());
            }
            h.update(dtype.as_bytes());
            h.update([0]);
        }
        ModelFingerprint(h.finalize().into())
    }

    pub fn short_hex(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelFingerprint({})", self.short_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> CacheLayout {
        CacheLayout {
            block_size: 16,
            compute_dtype: "f32".into(),
            tensors: vec![(vec![3, 16, 64], "f32".into()), (vec![3, 16], "i32".into())],
        }
    }

    #[test]
    fn every_input_changes_the_fingerprint() {
        let w = [7u8; 32];
        let base = ModelFingerprint::new(&w, &layout());
        assert_eq!(base, ModelFingerprint::new(&w, &layout()), "a pure function");
        assert_ne!(base, ModelFingerprint::new(&[8u8; 32], &layout()), "weights");
        let mut l = layout();
        l.block_size = 32;
        assert_ne!(base, ModelFingerprint::new(&w, &l), "block size");
        let mut l = layout();
        l.compute_dtype = "bf16".into();
        assert_ne!(base, ModelFingerprint::new(&w, &l), "compute dtype");
        let mut l = layout();
        l.tensors[0].1 = "f16".into();
        assert_ne!(base, ModelFingerprint::new(&w, &l), "KV dtype");
        let mut l = layout();
        l.tensors.push((vec![3, 16], "f32".into()));
        assert_ne!(base, ModelFingerprint::new(&w, &l), "an extra per-block tensor (scales)");
    }

    #[test]
    fn weights_are_hashed_by_content() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"weights one")?;
        std::fs::write(&b, b"weights one")?;
        let ha = WeightsIdentity::Files(vec![a.clone()]).content_hash()?;
        assert_eq!(ha, WeightsIdentity::Files(vec![b.clone()]).content_hash()?, "same bytes, other name");
        std::fs::write(&b, b"weights two")?;
        assert_ne!(ha, WeightsIdentity::Files(vec![b]).content_hash()?);
        assert!(WeightsIdentity::Files(vec![dir.path().join("missing")]).content_hash().is_err());
        Ok(())
    }
}
