//! The normalized model configuration every architecture is built from.
//!
//! Owns: `ModelConfig` (dimensions, norms, RoPE and its scaling, which optional pieces a layer
//! has) and its validation. HF `config.json` files and GGUF metadata are translated into it by the
//! architecture files (llama.rs, qwen2.rs, qwen3.rs), which know their own field names.
//!
//! Must not know: file formats, weights or tokenizers.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;

use crate::weights::{md_f32, md_u64};

/// The architectures kvault runs. They share one decoder (layers/) and differ in a few flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, Mistral (no sliding window), SmolLM.
    Llama,
    /// Qwen2: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on each head of q and k, explicit head_dim.
    Qwen3,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// How RoPE frequencies are rescaled for long context.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently, every frequency divided by it).
    Linear { factor: f32 },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: f32 },
    /// Per-frequency divisors stored with the weights (GGUF `rope_freqs.weight`).
    FrequencyFactors(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, and Llama configs with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias` in Llama configs covers it too).
    pub o_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Checks the relations the decoder relies on, so a bad config is a clear load-time error
    /// rather than a shape error deep in the forward pass.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("config: {name} must be positive");
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            bail!(
                "config: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!("config: head_dim ({}) must be even for rotary embeddings", self.head_dim);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("config: rope_theta must be a positive number, got {}", self.rope_theta);
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!("config: rms_norm_eps must be a positive number, got {}", self.rms_norm_eps);
        }
        Ok(())
    }

    pub fn num_queries_per_kv(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// Reads a required unsigned integer field of an HF config.
pub(crate) fn hf_usize(json: &Value, key: &str) -> Result<usize> {
    let v = json.get(key).with_context(|| format!("config.json: missing field `{key}`"))?;
    v.as_u64()
        .map(|v| v as usize)
        .with_context(|| format!("config.json: field `{key}` must be a non-negative integer, got {v}"))
}

pub(crate) fn hf_usize_or(json: &Value, key: &str, default: usize) -> Result<usize> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(_) => hf_usize(json, key),
    }
}

pub(crate) fn hf_f64_or(json: &Value, key: &str, default: f64) -> Result<f64> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .with_context(|| format!("config.json: field `{key}` must be a number, got {v}")),
    }
}

pub(crate) fn hf_bool_or(json: &Value, key: &str, default: bool) -> Result<bool> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .with_context(|| format!("config.json: field `{key}` must be true or false, got {v}")),
    }
}

/// The fields every HF decoder config of the supported families shares. Architecture files
/// start from this and adjust what differs.
pub(crate) fn hf_common(json: &Value, architecture: Architecture) -> Result<ModelConfig> {
    let hidden_size = hf_usize(json, "hidden_size")?;
    let num_heads = hf_usize(json, "num_attention_heads")?;
    if num_heads == 0 {
        bail!("config.json: num_attention_heads must be positive");
    }
    let num_kv_heads = hf_usize_or(json, "num_key_value_heads", num_heads)?;
    let head_dim = hf_usize_or(json, "head_dim", hidden_size / num_heads)?;
    let attention_bias = hf_bool_or(json, "attention_bias", false)?;
    Ok(ModelConfig {
        architecture,
        vocab_size: hf_usize(json, "vocab_size")?,
        hidden_size,
        intermediate_size: hf_usize(json, "intermediate_size")?,
        num_layers: hf_usize(json, "num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: hf_f64_or(json, "rms_norm_eps", 1e-6)?,
        rope_theta: hf_f64_or(json, "rope_theta", 10_000.0)? as f32,
        rope_scaling: hf_rope_scaling(json)?,
        max_position_embeddings: hf_usize_or(json, "max_position_embeddings", 4096)?,
        tie_word_embeddings: hf_bool_or(json, "tie_word_embeddings", false)?,
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        qk_norm: false,
    })
}

/// The fields every GGUF decoder of the supported families shares, under `{prefix}.` keys.
/// GGUF says "tied embeddings" by storing no `output.weight`.
pub(crate) fn gguf_common(
    md: &HashMap<String, GgufValue>,
    prefix: &str,
    architecture: Architecture,
    has_output_head: bool,
) -> Result<ModelConfig> {
    let key = |k: &str| format!("{prefix}.{k}");
    let u = |k: &str| md_u64(md, &key(k)).map(|v| v as usize);
    let hidden_size = u("embedding_length")?;
    let num_heads = u("attention.head_count")?;
    if num_heads == 0 {
        bail!("GGUF metadata: {prefix}.attention.head_count must be positive");
    }
    let num_kv_heads = u("attention.head_count_kv").unwrap_or(num_heads);
    let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_heads);
    let vocab_size = match md_u64(md, &key("vocab_size")) {
        Ok(v) => v as usize,
        Err(_) => match md.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(tokens)) => tokens.len(),
            _ => bail!("GGUF metadata: neither {prefix}.vocab_size nor tokenizer.ggml.tokens"),
        },
    };
    let rope_scaling = match md.get(&key("rope.scaling.type")) {
        Some(GgufValue::String(t)) if t == "linear" => {
            let factor = md_f32(md, &key("rope.scaling.factor"))?.unwrap_or(1.0);
            RopeScaling::Linear { factor }
        }
        Some(GgufValue::String(t)) if t != "none" => {
            bail!("GGUF metadata: unsupported {prefix}.rope.scaling.type `{t}`")
        }
        _ => RopeScaling::None,
    };
    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: u("feed_forward_length")?,
        num_layers: u("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: md_f32(md, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f64,
        rope_theta: md_f32(md, &key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: u("context_length")?,
        tie_word_embeddings: !has_output_head,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
    })
}

fn hf_rope_scaling(json: &Value) -> Result<RopeScaling> {
    let scaling = match json.get("rope_scaling") {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(s) => s,
    };
    // Newer configs say "rope_type", older ones "type".
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .context("config.json: rope_scaling has no `rope_type`")?;
    let factor = || -> Result<f32> {
        let f = hf_f64_or(scaling, "factor", f64::NAN)?;
        if !(f.is_finite() && f > 0.0) {
            bail!("config.json: rope_scaling.factor must be a positive number");
        }
        Ok(f as f32)
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: hf_f64_or(scaling, "low_freq_factor", 1.0)? as f32,
            high_freq_factor: hf_f64_or(scaling, "high_freq_factor", 4.0)? as f32,
            original_max_position_embeddings: hf_usize(scaling, "original_max_position_embeddings")
                .context("config.json: rope_scaling (llama3)")? as f32,
        }),
        other => bail!("config.json: unsupported rope_scaling type `{other}` (supported: linear, llama3)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_json() -> Value {
        json!({"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 4,
               "intermediate_size": 172, "num_hidden_layers": 5, "vocab_size": 512,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512})
    }

    #[test]
    fn head_dim_defaults_to_hidden_over_heads() {
        let c = hf_common(&llama_json(), Architecture::Llama).unwrap();
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.num_queries_per_kv(), 2);
        c.validate().unwrap();
    }

    #[test]
    fn llama3_rope_scaling_is_parsed() {
        let mut j = llama_json();
        j["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = hf_common(&j, Architecture::Llama).unwrap();
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 }
        );
    }

    #[test]
    fn unknown_rope_scaling_is_an_error_naming_it() {
        let mut j = llama_json();
        j["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        let err = hf_common(&j, Architecture::Llama).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn heads_not_divisible_by_kv_heads_fail_validation() {
        let mut j = llama_json();
        j["num_key_value_heads"] = json!(3);
        let c = hf_common(&j, Architecture::Llama).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn missing_field_names_the_field() {
        let mut j = llama_json();
        j.as_object_mut().unwrap().remove("vocab_size");
        let err = hf_common(&j, Architecture::Llama).unwrap_err().to_string();
        assert!(err.contains("vocab_size"), "{err}");
    }
}
