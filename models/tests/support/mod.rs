//! Test support: locating ../shared, reading reference.json, and driving one sequence through a
//! model over a paged cache (blocks handed out in order — the engine's block pool is not the
//! subject of these tests).
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use kvault_kernels::{AttentionMetadata, KvCacheShape, KvDtype, PagedKvCache};
use kvault_models::model::CausalLm;
use serde_json::Value;

pub fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(
        dir.join("models").is_dir(),
        "the shared test assets are missing: expected {} (a sibling of the repository) to hold models/ and data/",
        dir.display()
    );
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    shared_dir().join("models").join(name)
}

pub fn reference(name: &str) -> Value {
    let path = model_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The raw little-endian f32 rows of `*.last_logits.f32`.
pub fn last_logits_rows(name: &str, file: &str, vocab: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(model_dir(name).join(file)).unwrap();
    let all: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    all.chunks_exact(vocab).map(|r| r.to_vec()).collect()
}

/// One sequence over a private paged cache.
pub struct OneSequence<'a> {
    model: &'a dyn CausalLm,
    cache: PagedKvCache,
    block_size: usize,
    len: usize,
}

impl<'a> OneSequence<'a> {
    pub fn new(model: &'a dyn CausalLm, max_tokens: usize, block_size: usize) -> Self {
        let cfg = model.config();
        let shape = KvCacheShape {
            num_blocks: max_tokens.div_ceil(block_size) + 1,
            num_kv_heads: cfg.num_kv_heads,
            block_size,
            head_dim: cfg.head_dim,
        };
        let cache = PagedKvCache::new(cfg.num_layers, shape, KvDtype::from_float(model.dtype()).unwrap(), model.device()).unwrap();
        Self { model, cache, block_size, len: 0 }
    }

    /// Feeds `tokens` as one chunk; returns logits for every position of the chunk when
    /// `all_rows`, else only for the last.
    pub fn feed(&mut self, tokens: &[u32], all_rows: bool) -> Vec<Vec<f32>> {
        let n = tokens.len();
        let start = self.len;
        let end = start + n;
        // Blocks are numbered in reverse so the block table is not the identity: a kernel that
        // ignored it would read the wrong slots.
        let total_blocks = self.cache.shape.num_blocks as u32;
        let table: Vec<u32> = (0..end.div_ceil(self.block_size) as u32).map(|b| total_blocks - 1 - b).collect();
        let slots: Vec<i64> = (start..end)
            .map(|p| (table[p / self.block_size] as usize * self.block_size + p % self.block_size) as i64)
            .collect();
        let positions: Vec<u32> = (start as u32..end as u32).collect();
        let device = self.model.device().clone();
        let meta = AttentionMetadata::new(slots, positions, vec![table], vec![n], vec![end], self.block_size, &device)
            .unwrap();
        let input = Tensor::new(tokens, &device).unwrap();
        let rows: Vec<u32> = if all_rows { (0..n as u32).collect() } else { vec![n as u32 - 1] };
        let rows = Tensor::new(rows.as_slice(), &device).unwrap();
        let logits = self.model.forward(&input, &meta, &self.cache, &rows, None).unwrap();
        self.len = end;
        logits.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
    }

    /// Feeds the prompt in chunks of `chunk`, returning logits for every prompt position.
    pub fn feed_chunked_all(&mut self, tokens: &[u32], chunk: usize) -> Vec<Vec<f32>> {
        tokens.chunks(chunk).flat_map(|c| self.feed(c, true)).collect()
    }

    /// Greedy decoding: prompt, then `steps` argmax tokens (never stopping at EOS).
    pub fn greedy(&mut self, prompt: &[u32], steps: usize) -> Vec<u32> {
        let mut logits = self.feed(prompt, false).pop().unwrap();
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            let next = argmax(&logits);
            out.push(next);
            if out.len() == steps {
                break;
            }
            logits = self.feed(&[next], false).pop().unwrap();
        }
        out
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| ((x as f64) - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

pub fn device() -> Device {
    Device::Cpu
}
