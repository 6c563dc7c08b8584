//! GGUF weights, memory-mapped. Matrices stay quantized (candle `QTensor`) unless the caller asks
//! for a dense dtype; llama-family Q/K rows are put back into HF's rotate-half order at load by
//! permuting whole rows of quantized blocks (a row is quantized independently, so this is exact).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use kvault_kernels::MatmulPrecision;
use memmap2::Mmap;

use super::{hf_row_for_gguf_row, MatrixWeight, WeightName, WeightSource};

/// An opened GGUF file: its metadata and a read-only map of its bytes.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map of a model file kvault never writes.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..]))
            .map_err(|e| anyhow::anyhow!("{}: not a valid GGUF file: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), mmap, content })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// `general.architecture`, e.g. "llama", "qwen2", "qwen3".
    pub fn architecture(&self) -> Result<&str> {
        match self.content.metadata.get("general.architecture") {
            Some(Value::String(s)) => Ok(s),
            _ => bail!("{}: GGUF metadata has no general.architecture", self.path.display()),
        }
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor_infos.get(name)
    }

    /// The tensor's raw bytes, bounds-checked against the file (a truncated file is an error
    /// naming the tensor, never a read past the end).
    fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.info(name).with_context(|| format!("{}: tensor {name} is missing", self.path.display()))?;
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            bail!("{}: tensor {name} has {elems} elements, not a multiple of its block size {block}", self.path.display());
        }
        let size = elems / block * info.ggml_dtype.type_size();
        let start = self.content.tensor_data_offset.checked_add(info.offset).map(|s| s as usize);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.mmap.len() => Ok((info, &self.mmap[s..e])),
            _ => bail!(
                "{}: tensor {name} extends past the end of the file (truncated or corrupt GGUF)",
                self.path.display()
            ),
        }
    }
}

/// Weights of one GGUF model.
pub struct GgufWeights {
    file: Arc<GgufFile>,
    /// (query heads, kv heads) when Q/K rows must be un-permuted (llama-family GGUFs).
    qk_heads: Option<(usize, usize)>,
    /// Dequantize every matrix at load (`--dtype f32`).
    dequantize: bool,
    /// What the matrices kept quantized do with the activations (`--matmul-precision`).
    precision: MatmulPrecision,
}

impl GgufWeights {
    pub fn new(file: Arc<GgufFile>, qk_heads: Option<(usize, usize)>, dequantize: bool) -> Self {
        Self { file, qk_heads, dequantize, precision: MatmulPrecision::Exact }
    }

    /// The activation precision of every matrix kept quantized.
    pub fn with_matmul_precision(mut self, precision: MatmulPrecision) -> Self {
        self.precision = precision;
        self
    }

    fn qtensor(&self, name: WeightName, expected: &[usize], device: &Device) -> Result<QTensor> {
        let key = name.gguf();
        let (info, bytes) = self.file.raw(&key)?;
        let dims = info.shape.dims().to_vec();
        if dims != expected {
            bail!("{}: tensor {key} has shape {dims:?}, expected {expected:?}", self.file.path.display());
        }
        let heads = match (name, self.qk_heads) {
            (WeightName::Q(_) | WeightName::QBias(_), Some((q, _))) => Some(q),
            (WeightName::K(_) | WeightName::KBias(_), Some((_, kv))) => Some(kv),
            _ => None,
        };
        let unpermuted;
        let bytes = match heads {
            Some(n_heads) => {
                unpermuted = unpermute_rows(bytes, dims[0], n_heads)
                    .with_context(|| format!("{}: tensor {key}", self.file.path.display()))?;
                &unpermuted[..]
            }
            None => bytes,
        };
        qtensor_from_ggml(info.ggml_dtype, bytes, dims, device)
            .map_err(|e| anyhow::anyhow!("{}: tensor {key} cannot be loaded: {e}", self.file.path.display()))
    }
}

impl WeightSource for GgufWeights {
    fn contains(&self, name: WeightName) -> bool {
        self.file.info(&name.gguf()).is_some()
    }

    fn dense(&self, name: WeightName, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let q = self.qtensor(name, shape, device)?;
        Ok(q.dequantize(device)?.to_dtype(dtype)?)
    }

    fn matrix(&self, name: WeightName, out_dim: usize, in_dim: usize, dtype: DType, device: &Device) -> Result<MatrixWeight> {
        let q = self.qtensor(name, &[out_dim, in_dim], device)?;
        let float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if self.dequantize || float {
            Ok(MatrixWeight::Dense(q.dequantize(device)?.to_dtype(dtype)?))
        } else {
            Ok(MatrixWeight::Quantized(Arc::new(q), precision_for(name, self.precision)))
        }
    }
}

/// The activation precision of one matrix. `Int8` keeps the attention projections at 16 bits:
/// that is where 8-bit activations cost the most perplexity (SmolLM2-135M: +1.7% with every
/// matrix at 8 bits, +0.4% with Q/K/V/O exact).
fn precision_for(name: WeightName, asked: MatmulPrecision) -> MatmulPrecision {
    match (asked, name) {
        (MatmulPrecision::Int8, WeightName::Q(_) | WeightName::K(_) | WeightName::V(_) | WeightName::O(_)) => {
            MatmulPrecision::Int16
        }
        (p, _) => p,
    }
}

/// Reorders the rows of a `[rows, ...]` tensor stored row-major (any ggml type: each row is a
/// whole number of blocks) from llama.cpp's interleaved order to HF's rotate-half order.
fn unpermute_rows(bytes: &[u8], rows: usize, n_heads: usize) -> Result<Vec<u8>> {
    if rows == 0 || n_heads == 0 || rows % n_heads != 0 || bytes.len() % rows != 0 {
        bail!("{rows} rows cannot be split into {n_heads} heads");
    }
    let head_dim = rows / n_heads;
    if head_dim % 2 != 0 {
        bail!("head size {head_dim} is odd");
    }
    let row_bytes = bytes.len() / rows;
    let mut out = vec![0u8; bytes.len()];
    for (gguf_row, src) in bytes.chunks_exact(row_bytes).enumerate() {
        let hf_row = hf_row_for_gguf_row(gguf_row, head_dim);
        out[hf_row * row_bytes..(hf_row + 1) * row_bytes].copy_from_slice(src);
    }
    Ok(out)
}

/// Typed access to GGUF metadata with errors that name the key.
pub(crate) fn md_u64(md: &HashMap<String, Value>, key: &str) -> Result<u64> {
    let v = md.get(key).with_context(|| format!("GGUF metadata: missing {key}"))?;
    v.to_u64()
        .or_else(|_| v.to_u32().map(u64::from))
        .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
        .map_err(|_| anyhow::anyhow!("GGUF metadata: {key} is not an integer"))
}

pub(crate) fn md_f32(md: &HashMap<String, Value>, key: &str) -> Result<Option<f32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map(Some)
            .map_err(|_| anyhow::anyhow!("GGUF metadata: {key} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_moves_whole_rows() {
        // 2 heads of dim 4, rows of 3 bytes tagged by their GGUF row index.
        let rows = 8;
        let bytes: Vec<u8> = (0..rows).flat_map(|r| [r as u8; 3]).collect();
        let out = unpermute_rows(&bytes, rows, 2).unwrap();
        for gguf_row in 0..rows {
            let hf = hf_row_for_gguf_row(gguf_row, 4);
            assert_eq!(&out[hf * 3..hf * 3 + 3], &[gguf_row as u8; 3]);
        }
    }

    #[test]
    fn unpermute_rejects_rows_not_divisible_by_heads() {
        assert!(unpermute_rows(&[0u8; 9], 3, 2).is_err());
    }
}
