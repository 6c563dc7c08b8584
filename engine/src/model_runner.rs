//! Turns one scheduling decision into one batched forward pass.
//!
//! Owns: the KV cache tensors, and the translation from "these sequences, these token ranges,
//! these block tables" to flattened token ids, positions, slot mapping, varlen metadata and the
//! rows whose logits are needed. Prefill chunks and decode rows share one batch.
//!
//! Must not know: requests, sampling or scheduling policy.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Tensor;
use kvault_kernels::{
    copy_blocks, AttentionMetadata, BlockCopies, HeadRoles, KvCacheShape, KvDtype, PagedKvCache, SparseDecodePlan,
};
use kvault_models::model::{AttentionObserver, CausalLm};

use crate::kv_policy::lychee::SparseBlocks;

/// One sequence's share of a batch.
#[derive(Clone, Debug)]
pub struct BatchEntry<'a> {
    /// The tokens to compute this step (a prefill chunk, or the last sampled token).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` (= tokens already computed).
    pub start_pos: usize,
    /// Slot of `tokens[0]`: tokens the cache holds for the sequence. Equal to `start_pos`
    /// unless a KV policy evicted some; the chunk takes the next `tokens.len()` slots.
    pub start_slot: usize,
    /// The sequence's blocks, covering at least `start_slot + tokens.len()` slots.
    pub block_table: &'a [u32],
    /// Which rows' logits the step returns for this entry.
    pub logits: LogitRows,
    /// A `lychee` request's reading budget: a one-token step of it decodes sparsely.
    pub sparse: Option<SparseBlocks>,
}

/// The logits a batch entry needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    None,
    /// The last token's (the chunk completes the known tokens: sample from it).
    Last,
    /// Every token's (the prompt is being scored).
    All,
}

pub struct ModelRunner {
    model: Arc<dyn CausalLm>,
    cache: PagedKvCache,
    block_size: usize,
    /// The model's LycheeDecode head roles, when loaded (requests were validated against them).
    head_roles: Option<Arc<HeadRoles>>,
}

impl ModelRunner {
    pub fn new(
        model: Arc<dyn CausalLm>,
        num_blocks: usize,
        block_size: usize,
        kv_dtype: KvDtype,
        head_roles: Option<Arc<HeadRoles>>,
    ) -> Result<Self> {
        let cfg = model.config();
        let shape = KvCacheShape { num_blocks, num_kv_heads: cfg.num_kv_heads, block_size, head_dim: cfg.head_dim };
        let cache = PagedKvCache::new(cfg.num_layers, shape, kv_dtype, model.device())
            .context("allocating the KV cache")?;
        Ok(Self { model, cache, block_size, head_roles })
    }

    pub fn model(&self) -> &Arc<dyn CausalLm> {
        &self.model
    }

    /// The cache tensors, for the offload tier's block copies.
    pub(crate) fn cache(&self) -> &PagedKvCache {
        &self.cache
    }

    /// Copies whole blocks (`[source, copy]`) in every layer: a request's private copies of
    /// prefix-cache blocks it will rewrite.
    pub fn copy_blocks(&self, pairs: &[[u32; 2]]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let copies = BlockCopies::new(pairs.to_vec(), self.model.device())?;
        for layer in &self.cache.layers {
            copy_blocks(layer, &copies)?;
        }
        Ok(())
    }

    /// Runs the batch; returns the f32 logits rows the entries asked for, entry after entry
    /// (`All`: one per token; `Last`: one).
    /// `observer` sees every layer's attention (the KV policies' hook).
    pub fn run(&self, batch: &[BatchEntry], observer: Option<&mut dyn AttentionObserver>) -> Result<Vec<Vec<f32>>> {
        let bs = self.block_size;
        let num_tokens: usize = batch.iter().map(|e| e.tokens.len()).sum();
        let mut input_ids = Vec::with_capacity(num_tokens);
        let mut positions = Vec::with_capacity(num_tokens);
        let mut slots = Vec::with_capacity(num_tokens);
        let mut tables = Vec::with_capacity(batch.len());
        let mut query_lens = Vec::with_capacity(batch.len());
        let mut context_lens = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for entry in batch {
            let end = entry.start_slot + entry.tokens.len();
            input_ids.extend_from_slice(entry.tokens);
            positions.extend((entry.start_pos..entry.start_pos + entry.tokens.len()).map(|p| p as u32));
            for slot in entry.start_slot..end {
                let block = *entry
                    .block_table
                    .get(slot / bs)
                    .with_context(|| format!("block table too short for slot {slot}"))?;
                slots.push((block as usize * bs + slot % bs) as i64);
            }
            match entry.logits {
                LogitRows::None => {}
                LogitRows::Last => rows.push((input_ids.len() - 1) as u32),
                LogitRows::All => rows.extend((input_ids.len() - entry.tokens.len()) as u32..input_ids.len() as u32),
            }
            tables.push(entry.block_table[..end.div_ceil(bs)].to_vec());
            query_lens.push(entry.tokens.len());
            context_lens.push(end);
        }
        if rows.is_empty() && num_tokens == 0 {
            return Ok(Vec::new());
        }
        let device = self.model.device();
        let mut meta = AttentionMetadata::new(slots, positions, tables, query_lens, context_lens, bs, device)?;
        meta.sparse_decode = self.sparse_plan(batch, &meta)?.map(Arc::new);
        let input = Tensor::from_vec(input_ids, num_tokens, device)?;
        // A batch of pure prefill chunks that all stop mid-prompt still has to run (to fill the
        // cache) but samples nothing: project one row and drop it rather than special-casing.
        let want = rows.len();
        if rows.is_empty() {
            rows.push(0);
        }
        let rows_t = Tensor::from_vec(rows, want.max(1), device)?;
        let logits = match observer {
            // Why on the pool: the kernels' parallel loops (7 matmuls, norms and attention per
            // layer) called from this thread each hand their work to rayon's workers and block
            // on a latch until it is done — a sleep and a wake-up per op, hundreds per token,
            // about a quarter of a batch-1 decode step in `perf`. Run from a worker, the same
            // loops split onto its own deque and the other workers stay awake between ops.
            None => rayon::scope(|_| self.model.forward(&input, &meta, &self.cache, &rows_t, None))?,
            // An observer need not be Send: the forward pass stays on this thread.
            Some(observer) => self.model.forward(&input, &meta, &self.cache, &rows_t, Some(observer))?,
        };
        let mut out = logits.to_vec2::<f32>()?;
        out.truncate(want);
        Ok(out)
    }

    /// The step's LycheeDecode plan: every one-token row of a `lychee` request whose budget no
    /// longer covers its context decodes sparsely; `None` when no row does (the plain kernels run).
    fn sparse_plan(&self, batch: &[BatchEntry], meta: &AttentionMetadata) -> Result<Option<SparseDecodePlan>> {
        let Some(roles) = &self.head_roles else { return Ok(None) };
        let bs = self.block_size;
        let mut any = false;
        let (mut budget, mut sink, mut recent) = (Vec::new(), Vec::new(), Vec::new());
        for (entry, &ctx) in batch.iter().zip(&meta.host.context_lens) {
            let sparse = entry.sparse.filter(|b| entry.tokens.len() == 1 && b.budget_at(ctx as usize, bs) > 0);
            any |= sparse.is_some();
            budget.push(sparse.map_or(0, |b| b.budget));
            sink.push(sparse.map_or(0, |b| b.sink));
            recent.push(sparse.map_or(0, |b| b.recent));
        }
        if !any {
            return Ok(None);
        }
        Ok(Some(SparseDecodePlan::new(roles.clone(), budget, sink, recent, meta, self.model.device())?))
    }
}
