//! The pre-norm decoder stack shared by Llama, Qwen2 and Qwen3, and the `CausalLm`
//! implementation on top of it.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use kvault_kernels::{rms_norm, AttentionMetadata, LayerKvCache, PagedKvCache};

use super::attention::SparseSelection;
use super::{Attention, Embedding, Linear, Mlp, RotaryEmbedding};
use crate::config::ModelConfig;
use crate::model::{AttentionObserver, CausalLm};
use crate::weights::{WeightName, WeightSource};

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    attn_norm: Tensor,
    attn: Attention,
    mlp_norm: Tensor,
    mlp: Mlp,
    eps: f32,
}

impl DecoderLayer {
    pub fn load(cfg: &ModelConfig, layer: usize, w: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            attn_norm: w.dense(WeightName::AttnNorm(layer), &[h], dtype, device)?,
            attn: Attention::load(cfg, layer, w, dtype, device)?,
            mlp_norm: w.dense(WeightName::MlpNorm(layer), &[h], dtype, device)?,
            mlp: Mlp::load(cfg, layer, w, dtype, device)?,
            eps: cfg.rms_norm_eps as f32,
        })
    }

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
        let normed = rms_norm(x, &self.attn_norm, self.eps)?;
        let h = self.attn.forward(&normed, rotary, meta, cache, layer, observer, sparse)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&rms_norm(&x, &self.mlp_norm, self.eps)?)?;
        Ok((x + h)?)
    }
}

/// A decoder-only transformer: embeddings, N decoder layers, final norm, output head.
pub struct Transformer {
    config: ModelConfig,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    dtype: DType,
    device: Device,
}

impl Transformer {
    /// Builds the model from `w`. `dtype` is the compute dtype (f32 on CPU).
    pub fn load(mut config: ModelConfig, w: &dyn WeightSource, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = Embedding::new(w.matrix(WeightName::Embed, v, h, dtype, device)?);
        // A checkpoint can declare untied embeddings yet ship no lm_head (and GGUF says "tied"
        // by omitting output.weight): use the embedding table whenever no head is stored.
        let lm_head = if !config.tie_word_embeddings && w.contains(WeightName::LmHead) {
            Linear::load(w, WeightName::LmHead, None, v, h, dtype, device)?
        } else {
            config.tie_word_embeddings = true;
            Linear::from_matrix(embed.table().clone(), None, v)?
        };
        let layers = (0..config.num_layers)
            .map(|l| DecoderLayer::load(&config, l, w, dtype, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: w.dense(WeightName::FinalNorm, &[h], dtype, device)?,
            rotary: RotaryEmbedding::new(&config, device)?,
            embed,
            layers,
            lm_head,
            config,
            dtype,
            device: device.clone(),
        })
    }
}

impl CausalLm for Transformer {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn forward(
        &self,
        input_ids: &Tensor,
        meta: &AttentionMetadata,
        cache: &PagedKvCache,
        logits_indices: &Tensor,
        mut observer: Option<&mut dyn AttentionObserver>,
    ) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            bail!("KV cache has {} layers, the model {}", cache.layers.len(), self.layers.len());
        }
        let mut x = self.embed.forward(input_ids)?;
        let mut sparse = SparseSelection::start(meta)?;
        for (i, (layer, layer_cache)) in self.layers.iter().zip(&cache.layers).enumerate() {
            // Reborrow per layer (the coercion shortens the trait object's lifetime).
            let observer = observer.as_mut().map(|o| &mut **o as &mut dyn AttentionObserver);
            x = layer.forward(&x, &self.rotary, meta, layer_cache, i, observer, sparse.as_mut())?;
        }
        // Only the rows that will be sampled (or scored) go through the final norm and the
        // vocabulary projection: for a prefill chunk that is one row instead of hundreds.
        let x = x.index_select(logits_indices, 0)?;
        let x = rms_norm(&x, &self.norm, self.config.rms_norm_eps as f32)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}
