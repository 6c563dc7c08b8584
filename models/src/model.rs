//! Loading a model end to end, and the interface the engine runs it through.
//!
//! Owns: `CausalLm` (one flattened varlen batch in, logits for chosen rows out, K/V written to the
//! paged cache it is handed) and `load_model`, which turns a `ModelSource` into weights, config,
//! tokenizer, stop ids and chat template.
//!
//! Must not know: requests, sampling, or how the cache's blocks are allocated.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use kvault_kernels::{AttentionMetadata, HeadRoles, LayerKvCache, MatmulPrecision, PagedKvCache};
use serde_json::Value;

use crate::chat_template::ChatTemplate;
use crate::config::{Architecture, ModelConfig};
use crate::embedded;
use crate::gates::{LayerGate, RetentionGates};
use crate::layers::Transformer;
use crate::source::ModelSource;
use crate::special_tokens::SpecialTokens;
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufFile, GgufWeights, SafetensorsWeights, WeightName, WeightSource};
use crate::{llama, qwen2, qwen3};

/// A causal language model over a paged KV cache.
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn device(&self) -> &Device;
    /// The compute dtype (also the natural KV cache dtype).
    fn dtype(&self) -> DType;
    /// Runs one flattened batch.
    /// - `input_ids`: `[tokens]` u32, sequences back to back as `meta` describes;
    /// - writes every token's K/V into `cache` at `meta.slot_mapping`;
    /// - returns f32 logits `[rows, vocab]` for the token indices in `logits_indices` (`[rows]` u32);
    /// - calls `observer` (when given) in each layer right after its attention.
    fn forward(
        &self,
        input_ids: &Tensor,
        meta: &AttentionMetadata,
        cache: &PagedKvCache,
        logits_indices: &Tensor,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> Result<Tensor>;
}

/// What one layer's attention just did, for whoever manages the KV cache (eviction policies).
pub struct LayerAttention<'a> {
    pub layer: usize,
    /// `[tokens, num_heads, head_dim]`, after RoPE (and q-norm): the queries that attended.
    pub q: &'a Tensor,
    /// `[tokens, hidden]`: the layer's normalized input (what the q/k/v projections saw), from
    /// which learned retention gates compute each new token's `log β`.
    pub hidden: &'a Tensor,
    /// The layer's cache, this step's K/V already written.
    pub cache: &'a LayerKvCache,
    pub meta: &'a AttentionMetadata,
    pub softmax_scale: f32,
}

/// Called by every layer after its attention and before its output projection, so a KV policy
/// can score and evict in the layer that computed the scores. May modify the layer's cache
/// in place (evicting never changes this step's attention output, already computed).
pub trait AttentionObserver {
    fn after_attention(&mut self, attention: LayerAttention<'_>) -> Result<()>;
}

/// How to load: where to compute, and in which dtype.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: f32 compute on CPU (f16 elsewhere) and GGUF matrices stay quantized.
    /// `Some(dt)`: compute in `dt`; GGUF matrices are dequantized to it at load.
    pub dtype: Option<DType>,
    /// What quantized GGUF matrices do with the activations on CPU (ignored when dequantized).
    pub matmul_precision: MatmulPrecision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: None, matmul_precision: MatmulPrecision::default() }
    }
}

/// Everything needed to serve a model (clones share the weights).
#[derive(Clone)]
pub struct LoadedModel {
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub special_tokens: SpecialTokens,
    pub chat_template: Option<ChatTemplate>,
    /// What the weights are, for logs and `kvault doctor`: "safetensors f32", "gguf Q4_1 (quantized)".
    pub weights_description: String,
    /// TRIM-KV retention gates for this model (f32, on the model's device), when loaded: what
    /// `kv_policy trimkv` ranks by.
    pub retention_gates: Option<Arc<RetentionGates>>,
    /// LycheeDecode head roles for this model, when loaded: what `kv_policy lychee` decodes with.
    pub head_roles: Option<Arc<HeadRoles>>,
}

impl LoadedModel {
    /// Attaches retention gates after checking they were made for this model (layers, width,
    /// KV heads); the error names what differs.
    pub fn with_retention_gates(mut self, gates: RetentionGates) -> Result<Self> {
        let c = self.model.config();
        gates.check_fits(c.num_layers, c.hidden_size, c.num_kv_heads)?;
        let device = self.model.device().clone();
        let on_device = RetentionGates {
            layers: gates
                .to_f32()?
                .layers
                .into_iter()
                .map(|g| {
                    Ok(LayerGate {
                        w1: g.w1.to_device(&device)?,
                        b1: g.b1.to_device(&device)?,
                        w2: g.w2.to_device(&device)?,
                        bias: g.bias.to_device(&device)?,
                    })
                })
                .collect::<Result<_>>()?,
        };
        self.retention_gates = Some(Arc::new(on_device));
        Ok(self)
    }

    /// Attaches head roles after checking they were made for this model (layers, KV heads).
    pub fn with_head_roles(mut self, roles: HeadRoles) -> Result<Self> {
        let c = self.model.config();
        if (roles.num_layers(), roles.num_kv_heads()) != (c.num_layers, c.num_kv_heads) {
            bail!(
                "head roles are for {} layers × {} KV heads but the model has {} × {}: they were calibrated for another model",
                roles.num_layers(),
                roles.num_kv_heads(),
                c.num_layers,
                c.num_kv_heads
            )
        }
        self.head_roles = Some(Arc::new(roles));
        Ok(self)
    }
}

pub fn load_model(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() { DType::F32 } else { DType::F16 });
    match source {
        ModelSource::Embedded => load_embedded(dtype, &opts.device),
        ModelSource::Folder(dir) => load_folder(dir, dtype, &opts.device),
        ModelSource::Gguf(path) => load_gguf(path, opts.dtype.is_some(), opts.matmul_precision, dtype, &opts.device),
    }
}

/// Parses an HF config.json and dispatches on `model_type`.
pub fn config_from_hf_json(text: &str, origin: &str) -> Result<ModelConfig> {
    let json: Value = serde_json::from_str(text).with_context(|| format!("{origin}: not valid JSON"))?;
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .with_context(|| format!("{origin}: no `model_type`"))?;
    let cfg = match model_type {
        "llama" | "mistral" => llama::config_from_hf(&json),
        "qwen2" => qwen2::config_from_hf(&json),
        "qwen3" => qwen3::config_from_hf(&json),
        other => bail!("{origin}: unsupported model_type `{other}` (supported: llama, mistral, qwen2, qwen3)"),
    };
    let cfg = cfg.with_context(|| origin.to_string())?;
    cfg.validate().with_context(|| origin.to_string())?;
    Ok(cfg)
}

fn load_embedded(dtype: DType, device: &Device) -> Result<LoadedModel> {
    let (config, weights) = embedded_weights()?;
    let tokenizer = Tokenizer::from_bytes(embedded::TOKENIZER_JSON)?;
    let special_tokens = SpecialTokens::from_json_texts(
        Some(embedded::CONFIG_JSON),
        Some(embedded::GENERATION_CONFIG_JSON),
        Some(embedded::TOKENIZER_CONFIG_JSON),
        &tokenizer,
    )?;
    let model = Transformer::load(config, &weights, dtype, device)?;
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        special_tokens,
        chat_template: None,
        weights_description: format!("safetensors (embedded), {dtype:?}"),
        retention_gates: None,
        head_roles: None,
    })
}

fn load_folder(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let (config, weights) = folder_weights(dir)?;
    let tokenizer = load_side_tokenizer(dir)?
        .with_context(|| format!("{}: no tokenizer.json in the model folder", dir.display()))?;
    let special_tokens = SpecialTokens::from_model_dir(dir, &tokenizer)?;
    let chat_template = ChatTemplate::from_model_dir(dir)?;
    let model = Transformer::load(config, &weights, dtype, device)?;
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        special_tokens,
        chat_template,
        weights_description: format!("safetensors, {dtype:?}"),
        retention_gates: None,
        head_roles: None,
    })
}

fn load_gguf(
    path: &Path,
    dequantize: bool,
    precision: MatmulPrecision,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel> {
    let (file, config, weights) = gguf_weights(path, dequantize, precision, device)?;
    let md = file.metadata();

    let side_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tokenizer = match load_side_tokenizer(side_dir)? {
        Some(t) => t,
        None => Tokenizer::from_gguf(md).with_context(|| format!("{}: tokenizer metadata", path.display()))?,
    };
    let special_tokens = SpecialTokens::from_gguf(md, &tokenizer)?;
    let chat_template = match ChatTemplate::from_model_dir(side_dir)? {
        Some(t) => Some(t),
        None => match md.get("tokenizer.chat_template") {
            Some(candle_core::quantized::gguf_file::Value::String(src)) => Some(
                ChatTemplate::new(src, special_tokens.bos_token.clone(), special_tokens.eos_token.clone())
                    .with_context(|| format!("{}: tokenizer.chat_template", path.display()))?,
            ),
            _ => None,
        },
    };
    let model = Transformer::load(config, &weights, dtype, device)?;
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        special_tokens,
        chat_template,
        weights_description: match (dequantize, precision) {
            (true, _) => format!("gguf, dequantized to {dtype:?}"),
            (false, MatmulPrecision::Exact) => "gguf, quantized".into(),
            (false, MatmulPrecision::Int8) => "gguf, quantized, int8 activations".into(),
            (false, MatmulPrecision::Int16) => "gguf, quantized, int16 activations".into(),
        },
        retention_gates: None,
        head_roles: None,
    })
}

/// A model's normalized config and its weights, without building the network: what
/// `kvault train-gates` needs to build its own differentiable forward. `dequantize` turns GGUF
/// matrices dense on request.
pub fn open_weights(source: &ModelSource, dequantize: bool, device: &Device) -> Result<(ModelConfig, Box<dyn WeightSource>)> {
    Ok(match source {
        ModelSource::Embedded => {
            let (c, w) = embedded_weights()?;
            (c, Box::new(w))
        }
        ModelSource::Folder(dir) => {
            let (c, w) = folder_weights(dir)?;
            (c, Box::new(w))
        }
        ModelSource::Gguf(path) => {
            let (_, c, w) = gguf_weights(path, dequantize, MatmulPrecision::Exact, device)?;
            (c, Box::new(w))
        }
    })
}

fn embedded_weights() -> Result<(ModelConfig, SafetensorsWeights)> {
    let origin = format!("embedded {}", embedded::NAME);
    let config = config_from_hf_json(embedded::CONFIG_JSON, &format!("{origin} config.json"))?;
    Ok((config, SafetensorsWeights::from_static(embedded::MODEL_SAFETENSORS, &origin)?))
}

fn folder_weights(dir: &Path) -> Result<(ModelConfig, SafetensorsWeights)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read", config_path.display()))?;
    let config = config_from_hf_json(&text, &config_path.display().to_string())?;
    Ok((config, SafetensorsWeights::open_dir(dir)?))
}

fn gguf_weights(
    path: &Path,
    dequantize: bool,
    precision: MatmulPrecision,
    device: &Device,
) -> Result<(Arc<GgufFile>, ModelConfig, GgufWeights)> {
    let file = Arc::new(GgufFile::open(path)?);
    let md = file.metadata();
    let has_head = GgufWeights::new(file.clone(), None, false).contains(WeightName::LmHead);
    let arch = file.architecture()?;
    let config = match arch {
        "llama" => llama::config_from_gguf(md, has_head),
        "qwen2" => qwen2::config_from_gguf(md, has_head),
        "qwen3" => qwen3::config_from_gguf(md, has_head),
        other => bail!("{}: unsupported GGUF architecture `{other}` (supported: llama, qwen2, qwen3)", path.display()),
    }
    .with_context(|| path.display().to_string())?;
    config.validate().with_context(|| path.display().to_string())?;
    // llama.cpp's converter interleaves Q/K rows of llama-family models only.
    let qk_heads = (config.architecture == Architecture::Llama).then_some((config.num_heads, config.num_kv_heads));
    let weights = GgufWeights::new(file.clone(), qk_heads, dequantize).with_matmul_precision(precision);
    let config = apply_rope_freqs(config, &weights, device)?;
    Ok((file, config, weights))
}

/// Llama 3.1 GGUFs store their RoPE scaling as per-frequency divisors.
fn apply_rope_freqs(mut config: ModelConfig, weights: &GgufWeights, device: &Device) -> Result<ModelConfig> {
    if weights.contains(WeightName::RopeFreqs) {
        let t = weights.dense(WeightName::RopeFreqs, &[config.head_dim / 2], DType::F32, device)?;
        config.rope_scaling = crate::config::RopeScaling::FrequencyFactors(t.to_vec1::<f32>()?);
    }
    Ok(config)
}

fn load_side_tokenizer(dir: &Path) -> Result<Option<Tokenizer>> {
    let path = dir.join("tokenizer.json");
    if path.is_file() {
        Ok(Some(Tokenizer::from_file(&path)?))
    } else {
        Ok(None)
    }
}
