//! Self-attention over the paged KV cache.
//!
//! One call handles a whole flattened batch: project q/k/v for every token, optionally
//! normalize each head (Qwen3), rotate by absolute position, write this step's K/V into the
//! cache slots the metadata names, then attend through each sequence's block table. Keys are
//! stored after RoPE, so cached entries never need re-rotation.
//!
//! LycheeDecode: when the step's metadata carries a sparse-decode plan, this layer's sparse heads
//! read only the blocks in the step's selection, and its retrieval heads then choose the blocks
//! the sparse heads of the layers above will read ([`SparseSelection`]).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use kvault_kernels::{
    paged_attention, paged_attention_sparse, rms_norm, select_blocks, write_kv, AttentionMetadata, LayerKvCache,
    SparseDecodePlan,
};

use super::{Linear, LinearGroup, RotaryEmbedding};
use crate::config::ModelConfig;
use crate::model::{AttentionObserver, LayerAttention};
use crate::weights::{WeightName, WeightSource};

#[derive(Clone, Debug)]
pub struct Attention {
    /// q, k and v (one matmul when their weights stack).
    qkv: LinearGroup,
    o: Linear,
    /// Per-head RMSNorm weights for q and k (Qwen3).
    qk_norm: Option<(Tensor, Tensor)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    eps: f32,
    softmax_scale: f32,
}

impl Attention {
    pub fn load(cfg: &ModelConfig, layer: usize, w: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.num_heads * d, cfg.num_kv_heads * d);
        let bias = |name: WeightName| cfg.qkv_bias.then_some(name);
        let qk_norm = if cfg.qk_norm {
            Some((
                w.dense(WeightName::QNorm(layer), &[d], dtype, device)?,
                w.dense(WeightName::KNorm(layer), &[d], dtype, device)?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv: LinearGroup::new(vec![
                Linear::load(w, WeightName::Q(layer), bias(WeightName::QBias(layer)), q_dim, h, dtype, device)?,
                Linear::load(w, WeightName::K(layer), bias(WeightName::KBias(layer)), kv_dim, h, dtype, device)?,
                Linear::load(w, WeightName::V(layer), bias(WeightName::VBias(layer)), kv_dim, h, dtype, device)?,
            ])?,
            o: Linear::load(w, WeightName::O(layer), cfg.o_bias.then_some(WeightName::OBias(layer)), h, q_dim, dtype, device)?,
            qk_norm,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: d,
            eps: cfg.rms_norm_eps as f32,
            softmax_scale: 1.0 / (d as f32).sqrt(),
        })
    }

    /// `x`: `[tokens, hidden]` → `[tokens, hidden]`. `layer` and `observer` let a KV policy
    /// see this layer's queries and cache after attention; `sparse` is the step's LycheeDecode
    /// selection when some sequence decodes sparsely.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryEmbedding,
        meta: &AttentionMetadata,
        cache: &LayerKvCache,
        layer: usize,
        observer: Option<&mut dyn AttentionObserver>,
        sparse: Option<&mut SparseSelection>,
    ) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let [q, k, v]: [Tensor; 3] = self.qkv.forward(x)?.try_into().map_err(|_| anyhow::anyhow!("three projections expected"))?;
        let q = q.reshape((tokens, self.num_heads, self.head_dim))?;
        let k = k.reshape((tokens, self.num_kv_heads, self.head_dim))?;
        let v = v.reshape((tokens, self.num_kv_heads, self.head_dim))?;
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (rms_norm(&q, qn, self.eps)?, rms_norm(&k, kn, self.eps)?),
            None => (q, k),
        };
        let q = rotary.apply(&q, &meta.positions)?;
        let k = rotary.apply(&k, &meta.positions)?;
        write_kv(cache, &k, &v, meta)?;
        let attn = match sparse {
            None => paged_attention(&q, cache, meta, self.softmax_scale)?,
            Some(s) => {
                let attn = paged_attention_sparse(&q, cache, meta, self.softmax_scale, &s.plan, layer, &s.blocks)?;
                // The last layer's choice would have no reader: skip its scoring pass.
                if layer + 1 < s.plan.roles.num_layers() {
                    s.blocks = select_blocks(&q, cache, meta, &s.plan, layer, &s.blocks)?;
                }
                attn
            }
        };
        if let Some(observer) = observer {
            observer.after_attention(LayerAttention { layer, q: &q, hidden: x, cache, meta, softmax_scale: self.softmax_scale })?;
        }
        self.o.forward(&attn.reshape((tokens, self.num_heads * self.head_dim))?)
    }
}

/// One step's LycheeDecode state, carried up the layers: the plan (which sequences decode
/// sparsely, their block budgets, the model's head roles) and the blocks each KV head index
/// currently selects, which every layer's retrieval heads overwrite for the layers above.
pub struct SparseSelection {
    pub plan: std::sync::Arc<SparseDecodePlan>,
    /// I32 `[sequences, kv heads, plan.width]`.
    pub blocks: Tensor,
}

impl SparseSelection {
    /// The selection layer 0 starts from (sinks and recent blocks; layer 0 is all retrieval).
    pub fn start(meta: &AttentionMetadata) -> Result<Option<Self>> {
        let Some(plan) = meta.sparse_decode.clone() else { return Ok(None) };
        let blocks = plan.initial_selection(meta)?;
        Ok(Some(Self { plan, blocks }))
    }
}
